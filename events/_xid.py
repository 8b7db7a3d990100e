"""XID -> severity and action, after NVIDIA's XID catalog (Ampere and newer).

The driver reports errors as numbered XIDs; what an operator should do about each one is in
NVIDIA's catalog ("Resolution Bucket (Immediate Action)"). This module keeps the subset that
matters for serving: which XIDs to ignore, which only need the application restarted (unless
they repeat), which need a GPU reset, which need a reboot, and which must be decoded first
(48 and 74 carry details that decide the action).
"""

from __future__ import annotations

from dataclasses import dataclass

from events._catalog import CRITICAL, FATAL, INFO, WARNING

# Actions, least disruptive first.
IGNORE = "ignore"
RESTART_APP = "restart_app"
RESET_GPU = "reset_gpu"
REBOOT = "reboot"
DECODE = "decode"  # look at the details (ECC state, NVLink error) before deciding
INVESTIGATE = "investigate"  # not in the table: log and watch for repeats
SCHEDULE_RESET = "schedule_reset"  # a remap/retirement is pending: reset when convenient

ACTIONS = (IGNORE, RESTART_APP, RESET_GPU, REBOOT, DECODE, INVESTIGATE, SCHEDULE_RESET)

_SEVERITY = {
    IGNORE: INFO,
    INVESTIGATE: WARNING,
    RESTART_APP: WARNING,
    SCHEDULE_RESET: WARNING,
    DECODE: CRITICAL,
    RESET_GPU: CRITICAL,
    REBOOT: FATAL,
}

FATAL_ACTIONS = frozenset({RESET_GPU, REBOOT})


@dataclass(frozen=True)
class XidRule:
    xid: int
    mnemonic: str
    action: str

    @property
    def severity(self) -> str:
        return _SEVERITY[self.action]

    @property
    def fatal(self) -> bool:
        """Fatal = the node's GPU cannot serve until reset or reboot (quarantine it)."""
        return self.action in FATAL_ACTIONS


_RULES = (
    # Application-level faults: the process that hit them must restart; the GPU is fine.
    XidRule(8, "GPU stopped processing (idle timeout)", RESTART_APP),
    XidRule(13, "Graphics Engine Exception", RESTART_APP),
    XidRule(31, "GPU memory page fault", RESTART_APP),
    XidRule(32, "Invalid or corrupted push buffer stream", RESTART_APP),
    XidRule(43, "GPU stopped processing (user application fault)", IGNORE),
    XidRule(45, "Preemptive cleanup, due to previous errors", IGNORE),
    XidRule(48, "Double Bit ECC Error", DECODE),
    XidRule(61, "Internal micro-controller breakpoint/warning", RESET_GPU),
    XidRule(62, "Internal micro-controller halt", RESET_GPU),
    XidRule(63, "ECC page retirement or row remapping recording event", IGNORE),
    XidRule(64, "ECC page retirement or row remapper recording failure", RESET_GPU),
    XidRule(68, "NVDEC0 Exception", RESTART_APP),
    XidRule(69, "Graphics Engine class error", RESTART_APP),
    XidRule(74, "NVLINK Error", DECODE),
    XidRule(79, "GPU has fallen off the bus", REBOOT),
    XidRule(92, "High single-bit ECC error rate", IGNORE),
    XidRule(94, "Contained ECC error", RESTART_APP),
    XidRule(95, "Uncontained ECC error", RESET_GPU),
    XidRule(109, "Context Switch Timeout Error", RESTART_APP),
    XidRule(119, "GSP RPC Timeout", RESET_GPU),
    XidRule(120, "GSP Error", RESET_GPU),
    XidRule(121, "C2C Link corrected error", INVESTIGATE),
    XidRule(140, "Unrecovered ECC error", RESET_GPU),
)

XID_TABLE: dict[int, XidRule] = {r.xid: r for r in _RULES}


def rule_for(xid: int) -> XidRule:
    """The catalog rule, or an INVESTIGATE rule for an XID the table does not list."""
    return XID_TABLE.get(xid) or XidRule(xid, "unlisted XID", INVESTIGATE)


@dataclass(frozen=True)
class XidVerdict:
    severity: str
    action: str
    fatal: bool
    mnemonic: str
    escalated: bool = False


def classify(
    xid: int,
    *,
    message: str = "",
    ecc_uncontained: bool | None = None,
    repeats: int = 1,
    escalate_after: int = 3,
) -> XidVerdict:
    """Severity and action for one XID occurrence.

    ``repeats`` is how many times this XID hit this GPU inside the escalation window (this one
    included). An application-level XID that keeps repeating means the GPU, not the app, is at
    fault: it escalates to a GPU reset. ``ecc_uncontained`` decodes XID 48 (from the ECC /
    row-remapper state); the message text decodes XID 74 (NVLink): a fatal or uncorrectable link
    error needs a reset, a corrected one only the app restart.
    """
    rule = rule_for(xid)
    action = rule.action
    if action == DECODE:
        action = _decode(xid, message, ecc_uncontained)
    escalated = False
    if action in (RESTART_APP, INVESTIGATE) and repeats >= max(escalate_after, 1):
        action = RESET_GPU
        escalated = True
    return XidVerdict(
        severity=_SEVERITY[action],
        action=action,
        fatal=action in FATAL_ACTIONS,
        mnemonic=rule.mnemonic,
        escalated=escalated,
    )


def _decode(xid: int, message: str, ecc_uncontained: bool | None) -> str:
    text = message.lower()
    if xid == 48:
        if ecc_uncontained is False:
            return RESTART_APP
        # Unknown containment is treated as the worse case: the page may be poisoned.
        return RESET_GPU
    if xid == 74:
        if any(w in text for w in ("fatal", "uncorrectable", "link down", "training failed")):
            return RESET_GPU
        if text:
            return RESTART_APP
        return RESET_GPU
    return INVESTIGATE

"""Which GPU events are faults that take a node out of service.

trip_breaker and quarantine_node must agree on this, and neither may trust a source blindly: an
injected or buggy event can say ``fatal: true`` for XID 43. The XID action table in
``events`` decides; the source's own verdict is used only where the table says the details
decide (XID 48 and 74, which the source decodes) or where it escalated a repeating XID.
"""

from __future__ import annotations

from dataclasses import dataclass

from events import FATAL, Event, GpuEcc, GpuLost, GpuXid, payload_of
from events import rule_for as xid_rule

# Action names of the events XID table (events._xid).
IGNORE = "ignore"
DECODE = "decode"
FATAL_ACTIONS = frozenset({"reset_gpu", "reboot"})

LOST_XIDS = frozenset({79})  # fallen off the bus: the GPU is gone until a reboot


@dataclass(frozen=True)
class Fault:
    """A GPU fault on ``node``. ``lost``: the GPU is gone already (nothing left to protect on
    the node), so scale-awareness does not hold a drain back."""

    node: str
    reason: str
    lost: bool = False


def assess(event: Event) -> Fault | None:
    """The fault ``event`` reports, or None when it is benign (or not a GPU fault event)."""
    if event.type == GpuLost.TYPE:
        lost = payload_of(event)
        assert isinstance(lost, GpuLost)
        return Fault(lost.node, f"GPU lost: {lost.reason}", lost=True)
    if event.type == GpuXid.TYPE:
        xid = payload_of(event)
        assert isinstance(xid, GpuXid)
        rule = xid_rule(xid.xid)
        if rule.action == IGNORE:
            return None
        if rule.fatal:
            fatal = True
        elif rule.action == DECODE:
            fatal = xid.fatal or xid.action in FATAL_ACTIONS
        else:  # restart_app / investigate: fatal only when the source escalated a repeat
            fatal = xid.escalated and (xid.fatal or xid.action in FATAL_ACTIONS)
        if not fatal:
            return None
        text = f"XID {xid.xid} ({rule.mnemonic})"
        if xid.escalated:
            text += f", repeated {xid.count}x"
        return Fault(xid.node, text, lost=xid.xid in LOST_XIDS)
    if event.type == GpuEcc.TYPE:
        ecc = payload_of(event)
        assert isinstance(ecc, GpuEcc)
        uncorrectable = bool(ecc.volatile_uncorrected) or bool(ecc.remapped_rows_failure)
        if not (ecc.fatal or ecc.severity == FATAL or ecc.action in FATAL_ACTIONS
                or uncorrectable):
            return None
        parts = []
        if ecc.volatile_uncorrected:
            parts.append(f"{ecc.volatile_uncorrected} uncorrected")
        if ecc.remapped_rows_failure:
            parts.append("row remapping failed")
        return Fault(ecc.node, "uncorrectable ECC" + (f" ({', '.join(parts)})" if parts else ""))
    return None

"""The payload class of every Surefoot event type, with its subject and value rules.

GPU events (``gpu.*``) come from the GPU health source, pod and node events from the lifecycle
watch (or the local platform's supervisor), breaker, checkpoint, traffic and quarantine events
from the functions. Each class's ``TYPE`` is its CloudEvent type; the prose version of these
fields is docs/events.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from events._data import (
    DETECTOR_NVML,
    FATAL,
    PREFIX,
    EventData,
    check_severity,
    node_subject,
    pod_subject,
    revision_subject,
    service_subject,
)

# GPU events: subject node/<node>; ``gpu`` is the NVML index (None when only the PCI address is
# known, e.g. from the kernel log without NVML).


@dataclass(frozen=True)
class GpuXid(EventData):
    """An XID error reported by the driver (NVML event or kernel log)."""

    TYPE: ClassVar[str] = PREFIX + "gpu.xid"
    node: str
    xid: int
    severity: str
    action: str
    fatal: bool
    gpu: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    mnemonic: str = ""
    message: str = ""
    pid: int | None = None
    count: int = 1
    escalated: bool = False
    detector: str = DETECTOR_NVML

    def subject(self) -> str:
        return node_subject(self.node)

    def check(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        check_severity(self, errors)
        if self.xid < 0:
            errors["xid"] = "must be >= 0"
        if self.count < 1:
            errors["count"] = "must be >= 1"
        return errors


@dataclass(frozen=True)
class GpuEcc(EventData):
    """Uncorrected ECC errors, retired pages or remapped rows (pending / failed)."""

    TYPE: ClassVar[str] = PREFIX + "gpu.ecc"
    node: str
    severity: str
    action: str
    fatal: bool
    gpu: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    volatile_uncorrected: int | None = None
    volatile_corrected: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    detector: str = DETECTOR_NVML

    def subject(self) -> str:
        return node_subject(self.node)

    def check(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        check_severity(self, errors)
        return errors


@dataclass(frozen=True)
class GpuThermal(EventData):
    """Clocks slowed down for thermal or power reasons, or temperature over the threshold."""

    TYPE: ClassVar[str] = PREFIX + "gpu.thermal"
    node: str
    severity: str
    reasons: tuple[str, ...] = ()
    temperature_c: int | None = None
    gpu: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    detector: str = DETECTOR_NVML

    def subject(self) -> str:
        return node_subject(self.node)

    def check(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        check_severity(self, errors)
        return errors


@dataclass(frozen=True)
class GpuLost(EventData):
    """The GPU is gone (NVML_ERROR_GPU_IS_LOST, XID 79 fallen off the bus). Always fatal."""

    TYPE: ClassVar[str] = PREFIX + "gpu.lost"
    node: str
    reason: str
    severity: str = FATAL
    action: str = "reboot"
    fatal: bool = True
    gpu: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    detector: str = DETECTOR_NVML

    def subject(self) -> str:
        return node_subject(self.node)


@dataclass(frozen=True)
class GpuHealthy(EventData):
    """A GPU that had active problems reads clean again; ``cleared`` lists what went away."""

    TYPE: ClassVar[str] = PREFIX + "gpu.healthy"
    node: str
    cleared: tuple[str, ...] = ()
    gpu: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    detector: str = DETECTOR_NVML

    def subject(self) -> str:
        return node_subject(self.node)


# Pod events: subject pod/<namespace>/<pod>.


@dataclass(frozen=True)
class _PodBase(EventData):
    namespace: str
    pod: str

    def subject(self) -> str:
        return pod_subject(self.namespace, self.pod)


@dataclass(frozen=True)
class PodDeleted(_PodBase):
    """The pod is being deleted (``terminating``: grace period running) or is gone.

    ``missed`` is true when only a re-list or sweep saw it go (the watch missed the delete).
    """

    TYPE: ClassVar[str] = PREFIX + "pod.deleted"
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None
    terminating: bool = False
    grace_period_seconds: int | None = None
    missed: bool = False


@dataclass(frozen=True)
class PodEvicted(_PodBase):
    """Evicted: Eviction API, node pressure, taint manager or preemption (``reason``)."""

    TYPE: ClassVar[str] = PREFIX + "pod.evicted"
    reason: str
    message: str = ""
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PodOomKilled(_PodBase):
    """A container was killed for running out of memory."""

    TYPE: ClassVar[str] = PREFIX + "pod.oomkilled"
    container: str
    restart_count: int = 0
    exit_code: int | None = None
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PodCrashLoop(_PodBase):
    """A container is in CrashLoopBackOff."""

    TYPE: ClassVar[str] = PREFIX + "pod.crashloop"
    container: str
    restart_count: int = 0
    message: str = ""
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PodRestarted(_PodBase):
    """A container restarted (its restart count went up) for a reason other than OOM."""

    TYPE: ClassVar[str] = PREFIX + "pod.restarted"
    container: str
    restart_count: int
    reason: str = ""
    exit_code: int | None = None
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PodReady(_PodBase):
    """The pod's Ready condition became True."""

    TYPE: ClassVar[str] = PREFIX + "pod.ready"
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PodNotReady(_PodBase):
    """The pod's Ready condition became False (``reason`` from the condition)."""

    TYPE: ClassVar[str] = PREFIX + "pod.notready"
    reason: str = ""
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    uid: str | None = None


# Node events: subject node/<node>.


@dataclass(frozen=True)
class _NodeBase(EventData):
    node: str

    def subject(self) -> str:
        return node_subject(self.node)


@dataclass(frozen=True)
class NodeNotReady(_NodeBase):
    """Ready condition went False or Unknown (``status``), or the node object was deleted."""

    TYPE: ClassVar[str] = PREFIX + "node.notready"
    status: str = "False"
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class NodeReady(_NodeBase):
    """Ready condition went back to True."""

    TYPE: ClassVar[str] = PREFIX + "node.ready"


@dataclass(frozen=True)
class NodeCordoned(_NodeBase):
    """``spec.unschedulable`` became true."""

    TYPE: ClassVar[str] = PREFIX + "node.cordoned"


@dataclass(frozen=True)
class NodeUncordoned(_NodeBase):
    """``spec.unschedulable`` became false."""

    TYPE: ClassVar[str] = PREFIX + "node.uncordoned"


@dataclass(frozen=True)
class NodeQuarantined(_NodeBase):
    """Surefoot labelled, cordoned and drained the node because of ``cause_event_id``."""

    TYPE: ClassVar[str] = PREFIX + "node.quarantined"
    reason: str = ""
    cause_event_id: str | None = None
    dry_run: bool = False
    evicted_pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeReleased(_NodeBase):
    """Surefoot uncordoned and unlabelled a quarantined node."""

    TYPE: ClassVar[str] = PREFIX + "node.released"
    reason: str = ""
    cause_event_id: str | None = None


# Breakers: subject node/<name> or revision/<name>, per ``scope``.

BREAKER_SCOPES = ("node", "revision")


@dataclass(frozen=True)
class _BreakerBase(EventData):
    scope: str
    name: str
    reason: str = ""
    cause_event_id: str | None = None

    def subject(self) -> str:
        return node_subject(self.name) if self.scope == "node" else revision_subject(self.name)

    def check(self) -> dict[str, str]:
        if self.scope not in BREAKER_SCOPES:
            return {"scope": f"must be one of {', '.join(BREAKER_SCOPES)}"}
        return {}


@dataclass(frozen=True)
class BreakerOpened(_BreakerBase):
    """A breaker opened: traffic stops going to the node / revision."""

    TYPE: ClassVar[str] = PREFIX + "breaker.opened"
    hold_seconds: float | None = None


@dataclass(frozen=True)
class BreakerHalfOpened(_BreakerBase):
    """A breaker let trial traffic through after its hold time."""

    TYPE: ClassVar[str] = PREFIX + "breaker.halfopened"


@dataclass(frozen=True)
class BreakerClosed(_BreakerBase):
    """A breaker closed: traffic flows normally again."""

    TYPE: ClassVar[str] = PREFIX + "breaker.closed"


# Checkpoints: subject revision/<revision> (or pod/<namespace>/<pod> without a revision).


@dataclass(frozen=True)
class _CheckpointBase(EventData):
    revision: str | None = None
    pod: str | None = None
    namespace: str | None = None

    def subject(self) -> str:
        if self.revision:
            return revision_subject(self.revision)
        return pod_subject(self.namespace or "default", self.pod or "unknown")

    def check(self) -> dict[str, str]:
        if not self.revision and not self.pod:
            return {"revision": "revision or pod is required"}
        return {}


@dataclass(frozen=True)
class CheckpointRequested(_CheckpointBase):
    """Someone (timer, terminating pod, operator) asks for a snapshot."""

    TYPE: ClassVar[str] = PREFIX + "checkpoint.requested"
    reason: str = ""


@dataclass(frozen=True)
class CheckpointSaved(_CheckpointBase):
    """A snapshot was committed."""

    TYPE: ClassVar[str] = PREFIX + "checkpoint.saved"
    checkpoint_id: str = ""
    seconds: float | None = None
    bytes: int | None = None
    reason: str = ""

    def check(self) -> dict[str, str]:
        errors = super().check()
        if not self.checkpoint_id:
            errors["checkpoint_id"] = "missing"
        return errors


@dataclass(frozen=True)
class CheckpointRestored(_CheckpointBase):
    """A replica restored its serving state from a checkpoint."""

    TYPE: ClassVar[str] = PREFIX + "checkpoint.restored"
    checkpoint_id: str = ""
    seconds: float | None = None

    def check(self) -> dict[str, str]:
        errors = super().check()
        if not self.checkpoint_id:
            errors["checkpoint_id"] = "missing"
        return errors


# Traffic: subject service/<namespace>/<service>. ``targets`` mirrors Knative spec.traffic
# entries: {"revisionName": ..., "tag": ..., "percent": ...}.


@dataclass(frozen=True)
class TrafficRerouted(EventData):
    """Traffic moved from a revision to another (usually primary -> fallback)."""

    TYPE: ClassVar[str] = PREFIX + "traffic.rerouted"
    service: str
    from_revision: str
    to_revision: str
    percent: int
    namespace: str = "default"
    targets: tuple[dict[str, Any], ...] = ()
    reason: str = ""
    cause_event_id: str | None = None

    def subject(self) -> str:
        return service_subject(self.namespace, self.service)

    def check(self) -> dict[str, str]:
        return {} if 0 <= self.percent <= 100 else {"percent": "must be 0..100"}


@dataclass(frozen=True)
class TrafficRestored(EventData):
    """Traffic moved back to ``revision``, one step (``percent`` after step ``step``)."""

    TYPE: ClassVar[str] = PREFIX + "traffic.restored"
    service: str
    revision: str
    percent: int
    namespace: str = "default"
    step: int = 1
    targets: tuple[dict[str, Any], ...] = ()
    reason: str = ""

    def subject(self) -> str:
        return service_subject(self.namespace, self.service)

    def check(self) -> dict[str, str]:
        return {} if 0 <= self.percent <= 100 else {"percent": "must be 0..100"}


#: Every payload class, in the order of the catalog.
PAYLOAD_CLASSES: tuple[type[EventData], ...] = (
    GpuXid,
    GpuEcc,
    GpuThermal,
    GpuLost,
    GpuHealthy,
    PodDeleted,
    PodEvicted,
    PodOomKilled,
    PodCrashLoop,
    PodRestarted,
    PodReady,
    PodNotReady,
    NodeNotReady,
    NodeReady,
    NodeCordoned,
    NodeUncordoned,
    NodeQuarantined,
    NodeReleased,
    BreakerOpened,
    BreakerHalfOpened,
    BreakerClosed,
    CheckpointRequested,
    CheckpointSaved,
    CheckpointRestored,
    TrafficRerouted,
    TrafficRestored,
)

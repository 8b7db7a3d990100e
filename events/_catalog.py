"""The Surefoot CloudEvent catalog: every event type, its subject and its documented data fields.

Sources, functions and the local platform all build events through this module, so an injected
fault and a real one are the same bytes, and a consumer can decode any payload into a typed,
frozen dataclass. Each data class checks its own fields and reports every bad one at once.
The prose version of this catalog is docs/events.md.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from events._errors import EventValidationError

PREFIX = "dev.surefoot."
SPECVERSION = "1.0"
JSON = "application/json"

# Severities, mildest first.
INFO = "info"
WARNING = "warning"
CRITICAL = "critical"
FATAL = "fatal"
SEVERITIES = (INFO, WARNING, CRITICAL, FATAL)

# Detectors: where a GPU observation came from.
DETECTOR_NVML = "nvml"
DETECTOR_KERNEL_LOG = "kernel-log"
DETECTOR_INJECT = "inject"

T = TypeVar("T", bound="EventData")


@dataclass(frozen=True)
class Event:
    """One CloudEvent, transport-neutral. ``data`` is the JSON payload (a dict for our types).

    ``extensions`` holds every attribute beyond the v1.0 core ones, as strings.
    """

    type: str
    source: str
    id: str
    data: Any = None
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str | None = JSON
    dataschema: str | None = None
    specversion: str = SPECVERSION
    extensions: Mapping[str, str] = field(default_factory=dict)

    def attribute(self, name: str) -> str | None:
        """The attribute as a string (as a trigger filter sees it), or None when absent."""
        if name in _CORE_ATTRS:
            value = getattr(self, name)
            if value is None:
                return None
            if isinstance(value, datetime):
                return format_time(value)
            return str(value)
        return self.extensions.get(name)

    def with_extensions(self, **extensions: str) -> Event:
        merged = dict(self.extensions)
        merged.update(extensions)
        return dataclasses.replace(self, extensions=merged)

    @property
    def known(self) -> bool:
        """True when ``type`` is in the Surefoot catalog."""
        return self.type in CATALOG


_CORE_ATTRS = frozenset(
    {"type", "source", "id", "subject", "time", "datacontenttype", "dataschema", "specversion"}
)


def format_time(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def new_id() -> str:
    return str(uuid.uuid4())


# --- subjects -----------------------------------------------------------------------------


def node_subject(node: str) -> str:
    return f"node/{node}"


def pod_subject(namespace: str, pod: str) -> str:
    return f"pod/{namespace}/{pod}"


def revision_subject(revision: str) -> str:
    return f"revision/{revision}"


def service_subject(namespace: str, service: str) -> str:
    return f"service/{namespace}/{service}"


def parse_subject(subject: str | None) -> tuple[str, str] | None:
    """``"pod/ns/name"`` -> ``("pod", "ns/name")``; None for anything else."""
    if not subject or "/" not in subject:
        return None
    kind, _, name = subject.partition("/")
    if kind not in ("node", "pod", "revision", "service") or not name:
        return None
    return kind, name


# --- data classes -------------------------------------------------------------------------


class EventData:
    """Base of every payload class. Subclasses are frozen dataclasses with a ``TYPE``."""

    TYPE: ClassVar[str]

    def subject(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [dict(v) if isinstance(v, Mapping) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        """Decode and check a payload; raises EventValidationError naming every bad field."""
        if not isinstance(data, Mapping):
            raise EventValidationError({"data": f"must be a JSON object for {cls.TYPE}"})
        errors: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        for name, (hint, required) in _schema(cls).items():
            if name not in data or data[name] is None:
                if required and not _optional(hint):
                    errors[f"data.{name}"] = "missing"
                continue
            value, problem = _coerce(data[name], hint)
            if problem:
                errors[f"data.{name}"] = problem
            else:
                kwargs[name] = value
        if not errors:
            obj = cls(**kwargs)
            errors.update({f"data.{k}": v for k, v in obj.check().items()})
            if not errors:
                return obj
        raise EventValidationError(errors, message=f"invalid data for {cls.TYPE}")

    def check(self) -> dict[str, str]:
        """Value rules beyond types (ranges, enums); empty when the payload is fine."""
        return {}


_SCHEMAS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _schema(cls: type) -> dict[str, tuple[Any, bool]]:
    cached = _SCHEMAS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = {}
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            cached[f.name] = (hints[f.name], required)
        _SCHEMAS[cls] = cached
    return cached


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _coerce(value: Any, hint: Any) -> tuple[Any, str | None]:
    if _optional(hint):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0]
    origin = typing.get_origin(hint)
    if hint is bool:
        return (value, None) if isinstance(value, bool) else (None, "must be a boolean")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, "must be an integer"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, "must be a number"
    if hint is str:
        return (value, None) if isinstance(value, str) else (None, "must be a string")
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            return None, "must be a list"
        out = []
        for i, v in enumerate(value):
            got, problem = _coerce(v, item)
            if problem:
                return None, f"item {i} {problem}"
            out.append(got)
        return tuple(out), None
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            return None, "must be an object"
        return dict(value), None
    raise TypeError(f"unsupported field type {hint!r}")  # a catalog bug, not bad input


def _check_severity(obj: Any, errors: dict[str, str]) -> None:
    if obj.severity not in SEVERITIES:
        errors["severity"] = f"must be one of {', '.join(SEVERITIES)}"


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
        _check_severity(self, errors)
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
        _check_severity(self, errors)
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
        _check_severity(self, errors)
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


_CLASSES: tuple[type[EventData], ...] = (
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

#: event type -> payload class, for every Surefoot type.
CATALOG: Mapping[str, type[EventData]] = types.MappingProxyType({c.TYPE: c for c in _CLASSES})

# Knative's own event types that Surefoot accepts (and maps, see events._knative).
KNATIVE_APISERVER_PREFIXES = ("dev.knative.apiserver.resource.", "dev.knative.apiserver.ref.")
KNATIVE_PING = "dev.knative.sources.ping"


def is_accepted_type(event_type: str) -> bool:
    """A Surefoot catalog type or one of the Knative types Surefoot understands."""
    return (
        event_type in CATALOG
        or event_type == KNATIVE_PING
        or event_type.startswith(KNATIVE_APISERVER_PREFIXES)
    )


def build(
    payload: EventData,
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
    subject: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> Event:
    """The one way to make a Surefoot event: type, subject and data come from ``payload``."""
    errors = payload.check()
    if errors:
        raise EventValidationError(
            {f"data.{k}": v for k, v in errors.items()}, message=f"invalid data for {payload.TYPE}"
        )
    return Event(
        type=payload.TYPE,
        source=source,
        id=id or new_id(),
        data=payload.to_dict(),
        subject=subject or payload.subject(),
        time=time or datetime.now(UTC),
        datacontenttype=JSON,
        extensions=dict(extensions or {}),
    )


def payload_of(event: Event) -> EventData:
    """The typed payload of a catalog event; EventValidationError if the type or data is bad."""
    cls = CATALOG.get(event.type)
    if cls is None:
        raise EventValidationError({"type": f"not a Surefoot event type: {event.type!r}"})
    return cls.from_dict(event.data)


def check_payload(event: Event) -> dict[str, str]:
    """Every problem with a catalog event's data (empty for fine data or non-catalog types)."""
    cls = CATALOG.get(event.type)
    if cls is None:
        return {}
    try:
        cls.from_dict(event.data)
    except EventValidationError as exc:
        return exc.errors
    return {}

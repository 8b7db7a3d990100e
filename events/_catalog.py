"""The Surefoot CloudEvent catalog: every event type, its subject and its documented data fields.

Sources, functions and the local platform all build events through this module, so an injected
fault and a real one are the same bytes, and a consumer can decode any payload into a typed,
frozen dataclass. Each data class checks its own fields and reports every bad one at once.
The payload classes live in ``_payloads`` (their shared decoding in ``_data``); this module
names them all, holds the transport-neutral ``Event``, and builds and decodes events. The prose
version of this catalog is docs/events.md.
"""

from __future__ import annotations

import dataclasses
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events._data import (
    CRITICAL,
    DETECTOR_INJECT,
    DETECTOR_KERNEL_LOG,
    DETECTOR_NVML,
    FATAL,
    INFO,
    PREFIX,
    SEVERITIES,
    WARNING,
    EventData,
    node_subject,
    parse_subject,
    pod_subject,
    revision_subject,
    service_subject,
)
from events._errors import EventValidationError
from events._payloads import (
    BREAKER_SCOPES,
    PAYLOAD_CLASSES,
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    CheckpointRequested,
    CheckpointRestored,
    CheckpointSaved,
    GpuEcc,
    GpuHealthy,
    GpuLost,
    GpuThermal,
    GpuXid,
    NodeCordoned,
    NodeNotReady,
    NodeQuarantined,
    NodeReady,
    NodeReleased,
    NodeUncordoned,
    PodCrashLoop,
    PodDeleted,
    PodEvicted,
    PodNotReady,
    PodOomKilled,
    PodReady,
    PodRestarted,
    TrafficRerouted,
    TrafficRestored,
)

SPECVERSION = "1.0"
JSON = "application/json"


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


#: event type -> payload class, for every Surefoot type.
CATALOG: Mapping[str, type[EventData]] = types.MappingProxyType(
    {c.TYPE: c for c in PAYLOAD_CLASSES}
)

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


__all__ = [
    "BREAKER_SCOPES",
    "CATALOG",
    "CRITICAL",
    "DETECTOR_INJECT",
    "DETECTOR_KERNEL_LOG",
    "DETECTOR_NVML",
    "FATAL",
    "INFO",
    "JSON",
    "KNATIVE_APISERVER_PREFIXES",
    "KNATIVE_PING",
    "PREFIX",
    "SEVERITIES",
    "SPECVERSION",
    "WARNING",
    "BreakerClosed",
    "BreakerHalfOpened",
    "BreakerOpened",
    "CheckpointRequested",
    "CheckpointRestored",
    "CheckpointSaved",
    "Event",
    "EventData",
    "GpuEcc",
    "GpuHealthy",
    "GpuLost",
    "GpuThermal",
    "GpuXid",
    "NodeCordoned",
    "NodeNotReady",
    "NodeQuarantined",
    "NodeReady",
    "NodeReleased",
    "NodeUncordoned",
    "PodCrashLoop",
    "PodDeleted",
    "PodEvicted",
    "PodNotReady",
    "PodOomKilled",
    "PodReady",
    "PodRestarted",
    "TrafficRerouted",
    "TrafficRestored",
    "build",
    "check_payload",
    "format_time",
    "is_accepted_type",
    "new_id",
    "node_subject",
    "parse_subject",
    "payload_of",
    "pod_subject",
    "revision_subject",
    "service_subject",
]

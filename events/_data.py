"""The base of every event payload: JSON data decoded and checked against a dataclass.

A payload class is a frozen dataclass whose annotations are its schema: ``from_dict`` checks
each field's JSON type from them, then the class's own value rules (``check``), and reports every
bad field at once; ``to_dict`` is the inverse. The subject helpers name what an event is about
(``node/<node>``, ``pod/<namespace>/<pod>``, ...), the same way for every source.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from events._errors import EventValidationError

PREFIX = "dev.surefoot."

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


# --- payloads ---------------------------------------------------------------------------


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(value: Any) -> Any:
    return value


# JSON scalar field types: (accepts the value, converts it, problem when it does not).
_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), _same, "must be a boolean"),
    int: (_is_int, _same, "must be an integer"),
    float: (_is_number, float, "must be a number"),
    str: (lambda v: isinstance(v, str), _same, "must be a string"),
}


def _coerce(value: Any, hint: Any) -> tuple[Any, str | None]:
    if _optional(hint):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0]
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        accepts, convert, problem = scalar
        return (convert(value), None) if accepts(value) else (None, problem)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _coerce_list(value, typing.get_args(hint)[0])
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            return None, "must be an object"
        return dict(value), None
    raise TypeError(f"unsupported field type {hint!r}")  # a catalog bug, not bad input


def _coerce_list(value: Any, item: Any) -> tuple[Any, str | None]:
    if not isinstance(value, list):
        return None, "must be a list"
    out = []
    for i, v in enumerate(value):
        got, problem = _coerce(v, item)
        if problem:
            return None, f"item {i} {problem}"
        out.append(got)
    return tuple(out), None


def check_severity(obj: Any, errors: dict[str, str]) -> None:
    """Add an error for a ``severity`` field that is not one of ``SEVERITIES``."""
    if obj.severity not in SEVERITIES:
        errors["severity"] = f"must be one of {', '.join(SEVERITIES)}"

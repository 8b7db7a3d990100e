"""Pure encode/decode of events to and from HTTP messages (binary and structured content modes).

Built on cloudevents sdk-python 2.x (``cloudevents.core``), with the checks the SDK leaves out:
its binary-mode reader invents an ``id`` and a ``time`` when the headers carry none, and falls
back to text when a JSON body does not parse. Deduplication depends on the sender's id, and a
consumer must hear about a broken body, so the raw message is checked first and every bad field
is reported at once (EventValidationError.errors).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v03.event import CloudEvent as CloudEventV03
from cloudevents.core.v1.event import CloudEvent as CloudEventV1
from dateutil.parser import isoparse

from events._catalog import CATALOG, Event, format_time, is_accepted_type
from events._errors import EventValidationError, UnsupportedContentTypeError

HTTPMessage = ce_http.HTTPMessage

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SUPPORTED_SPECVERSIONS = ("1.0", "0.3")

_CORE = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")
_JSON_CT = re.compile(r"^(application|text)/([a-z0-9\-\.]+\+)?json(;.*)?$", re.IGNORECASE)
_EXT_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_FORMAT = JSONFormat()

TypePolicy = Callable[[str], bool]


def is_json_content_type(content_type: str | None) -> bool:
    return content_type is None or bool(_JSON_CT.match(content_type.strip()))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# --- encode -------------------------------------------------------------------------------


def to_cloudevent(event: Event) -> CloudEventV1 | CloudEventV03:
    """The SDK object for ``event`` (no attribute is invented: a missing time stays missing)."""
    return _to_sdk(event, event.data)


def _to_sdk(event: Event, data: Any) -> CloudEventV1 | CloudEventV03:
    attrs: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    if event.subject is not None:
        attrs["subject"] = event.subject
    if event.time is not None:
        attrs["time"] = event.time
    if event.datacontenttype is not None:
        attrs["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        attrs["dataschema"] = event.dataschema
    attrs.update(event.extensions)
    factory = CloudEventV03 if event.specversion == "0.3" else CloudEventV1
    try:
        ce = factory(attrs, data)
    except CloudEventValidationError as exc:
        raise EventValidationError(_sdk_errors(exc)) from None
    if event.time is None:
        # The SDK adds the current time when none is given and keeps our dict: take it back out.
        attrs.pop("time", None)
    return ce


def _data_bytes(event: Event) -> bytes:
    data = event.data
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if is_json_content_type(event.datacontenttype):
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    if isinstance(data, str):
        return data.encode()
    raise EventValidationError(
        {"data": f"a {type(data).__name__} cannot be sent as {event.datacontenttype}"}
    )


def to_binary(event: Event) -> HTTPMessage:
    """Binary content mode: attributes as ``ce-*`` headers, the data as the body."""
    # The SDK writes a JSON string or list with str(); hand it the serialized bytes instead.
    return ce_http.to_binary(_to_sdk(event, _data_bytes(event)), _FORMAT)


def to_structured(event: Event) -> HTTPMessage:
    """Structured content mode: one ``application/cloudevents+json`` document."""
    return ce_http.to_structured(to_cloudevent(event), _FORMAT)


def to_dict(event: Event) -> dict[str, Any]:
    """The structured-mode JSON envelope as a dict (for JSON lines, logs, replies)."""
    out: dict[str, Any] = json.loads(_FORMAT.write(to_cloudevent(event)))
    return out


def from_dict(envelope: Any, *, accept: TypePolicy | None = None) -> Event:
    """Decode a structured-mode envelope already parsed from JSON."""
    body = json.dumps(envelope).encode()
    return _from_structured(body, envelope, accept)


# --- decode -------------------------------------------------------------------------------


def from_http(
    headers: Mapping[str, str],
    body: bytes,
    *,
    accept: TypePolicy | None = is_accepted_type,
) -> Event:
    """Decode an HTTP message in either content mode.

    ``accept`` decides which types are known (None accepts any type). A Surefoot catalog type
    also has its data checked against the catalog. Raises EventValidationError (every bad field
    at once) or UnsupportedContentTypeError (neither mode).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if any(k.startswith("ce-") for k in lowered):
        return _from_binary(lowered, body, accept)
    mt = media_type(lowered.get("content-type"))
    if mt == STRUCTURED_CONTENT_TYPE:
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventValidationError({"body": f"invalid JSON: {exc}"}) from None
        return _from_structured(body, envelope, accept)
    raise UnsupportedContentTypeError(lowered.get("content-type"))


def is_cloudevent_message(headers: Mapping[str, str]) -> bool:
    """True when the message carries an event in either mode (used for reply detection)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if any(k.startswith("ce-") for k in lowered):
        return True
    return media_type(lowered.get("content-type")) == STRUCTURED_CONTENT_TYPE


def _check_attrs(attrs: Mapping[str, Any], accept: TypePolicy | None) -> dict[str, str]:
    errors = _core_problems(attrs)
    if "time" in attrs:
        problem = _time_problem(attrs["time"])
        if problem:
            errors["time"] = problem
    errors.update(_extension_problems(attrs))
    event_type = attrs.get("type")
    if (
        accept is not None
        and isinstance(event_type, str)
        and event_type.strip()
        and not accept(event_type)
    ):
        errors["type"] = f"unknown event type {event_type!r}"
    return errors


def _core_problems(attrs: Mapping[str, Any]) -> dict[str, str]:
    """specversion, the required id / source / type, and the optional string attributes."""
    errors: dict[str, str] = {}
    spec = attrs.get("specversion")
    if spec is None or spec == "":
        errors["specversion"] = "missing"
    elif spec not in SUPPORTED_SPECVERSIONS:
        errors["specversion"] = f"unsupported {spec!r}, expected '1.0'"
    for name in ("id", "source", "type"):
        value = attrs.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            errors[name] = "missing"
        elif not isinstance(value, str):
            errors[name] = "must be a string"
    for name in ("subject", "datacontenttype", "dataschema"):
        if name in attrs and (not isinstance(attrs[name], str) or not attrs[name]):
            errors[name] = "must be a non-empty string when present"
    return errors


def _extension_problems(attrs: Mapping[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for name, value in attrs.items():
        if name in _CORE or name in ("data", "data_base64", "schemaurl", "datacontentencoding"):
            continue
        if not _EXT_NAME.match(name):
            errors[name] = "extension names are 1-20 lowercase letters or digits"
        elif isinstance(value, dict | list) or value is None:
            errors[name] = "extension values are strings, numbers or booleans"
    return errors


def _time_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be an RFC 3339 timestamp string"
    try:
        parsed = isoparse(value)
    except (ValueError, OverflowError):
        return f"not an RFC 3339 timestamp: {value!r}"
    if parsed.tzinfo is None:
        return f"timestamp has no time zone: {value!r}"
    return None


def _from_binary(headers: dict[str, str], body: bytes, accept: TypePolicy | None) -> Event:
    attrs: dict[str, Any] = {}
    for key, value in headers.items():
        if key.startswith("ce-"):
            attrs[key[3:]] = unquote(value).strip()
    content_type = headers.get("content-type")
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    errors = _check_attrs(attrs, accept)
    data: Any = None
    if body:
        if is_json_content_type(content_type):
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                if content_type is not None:
                    errors["data"] = f"invalid JSON for {content_type}: {exc}"
                data = _text_or_bytes(body)
        else:
            data = _text_or_bytes(body)
    if "data" not in errors:
        errors.update(_data_errors(attrs.get("type"), content_type, data))
    if errors:
        raise EventValidationError(errors)
    message = HTTPMessage(headers=headers, body=body)
    try:
        ce = ce_http.from_binary(message, _FORMAT)
    except CloudEventValidationError as exc:
        raise EventValidationError(_sdk_errors(exc)) from None
    return _from_sdk(ce, data, had_time="time" in attrs)


def _from_structured(body: bytes, envelope: Any, accept: TypePolicy | None) -> Event:
    if not isinstance(envelope, dict):
        raise EventValidationError({"body": "a structured event must be a JSON object"})
    errors = _check_attrs(envelope, accept)
    if "data" in envelope and "data_base64" in envelope:
        errors["data_base64"] = "data and data_base64 are mutually exclusive"
    b64 = envelope.get("data_base64")
    data: Any = envelope.get("data")
    if b64 is not None:
        try:
            data = base64.b64decode(b64, validate=True)
        except (ValueError, TypeError):
            errors["data_base64"] = "not valid base64"
    if "data_base64" not in errors:
        errors.update(_data_errors(envelope.get("type"), envelope.get("datacontenttype"), data))
    if errors:
        raise EventValidationError(errors)
    try:
        ce = ce_http.from_structured(HTTPMessage(headers={}, body=body), _FORMAT)
    except CloudEventValidationError as exc:
        raise EventValidationError(_sdk_errors(exc)) from None
    except (ValueError, TypeError) as exc:
        raise EventValidationError({"body": str(exc)}) from None
    return _from_sdk(ce, data, had_time="time" in envelope)


def _text_or_bytes(body: bytes) -> str | bytes:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def _from_sdk(ce: Any, data: Any, *, had_time: bool) -> Event:
    attrs = ce.get_attributes()
    extensions = {k: _ext_str(v) for k, v in attrs.items() if k not in _CORE}
    time_value = attrs.get("time") if had_time else None
    return Event(
        type=attrs["type"],
        source=attrs["source"],
        id=attrs["id"],
        data=data,
        subject=attrs.get("subject"),
        time=time_value if isinstance(time_value, datetime) else None,
        datacontenttype=attrs.get("datacontenttype"),
        dataschema=attrs.get("dataschema"),
        specversion=attrs["specversion"],
        extensions=extensions,
    )


def _data_errors(event_type: Any, content_type: Any, data: Any) -> dict[str, str]:
    """Catalog types carry a JSON object with the documented fields."""
    cls = CATALOG.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        return {}
    errors: dict[str, str] = {}
    if content_type is not None and not is_json_content_type(str(content_type)):
        errors["datacontenttype"] = f"must be application/json for {event_type}"
    try:
        cls.from_dict(data)
    except EventValidationError as exc:
        errors.update(exc.errors)
    return errors


def _ext_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def _sdk_errors(exc: CloudEventValidationError) -> dict[str, str]:
    return {key: "; ".join(str(e) for e in errs) for key, errs in exc.errors.items()}

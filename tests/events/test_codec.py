"""Encode/decode in binary and structured mode, and the checks the SDK leaves out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

import events as ev
from tests.events.samples import PAYLOADS

GOOD = {
    "ce-specversion": "1.0",
    "ce-id": "abc",
    "ce-source": "/src",
    "ce-type": "dev.surefoot.node.ready",
    "content-type": "application/json",
}


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.TYPE)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_round_trip_every_type(payload: ev.EventData, mode: str) -> None:
    event = ev.build(payload, source="/surefoot/test", extensions={"traceparent": "00-ab"})
    msg = ev.to_binary(event) if mode == "binary" else ev.to_structured(event)
    back = ev.from_http(msg.headers, msg.body)
    assert back == event
    assert ev.payload_of(back) == payload


def test_binary_headers_and_body() -> None:
    event = ev.build(ev.NodeReady(node="n1"), source="/s", id="id-1",
                     time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    msg = ev.to_binary(event)
    assert msg.headers["ce-id"] == "id-1"
    assert msg.headers["ce-time"] == "2025-01-02T03:04:05Z"
    assert msg.headers["ce-subject"] == "node/n1"
    assert msg.headers["content-type"] == "application/json"
    assert json.loads(msg.body) == {"node": "n1"}


def test_structured_envelope() -> None:
    event = ev.build(ev.NodeReady(node="n1"), source="/s", id="id-1")
    msg = ev.to_structured(event)
    assert msg.headers["content-type"] == "application/cloudevents+json"
    doc = json.loads(msg.body)
    assert doc["id"] == "id-1"
    assert doc["data"] == {"node": "n1"}
    assert doc["specversion"] == "1.0"
    assert ev.to_dict(event) == doc
    assert ev.from_dict(doc) == event


def test_missing_ce_id_is_an_error_not_an_invented_id() -> None:
    headers = {k: v for k, v in GOOD.items() if k != "ce-id"}
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(headers, b'{"node":"n1"}')
    assert info.value.errors == {"id": "missing"}


def test_missing_time_stays_missing() -> None:
    back = ev.from_http(GOOD, b'{"node":"n1"}')
    assert back.time is None
    assert "ce-time" not in ev.to_binary(back).headers
    assert "time" not in ev.to_dict(back)


def test_every_bad_field_reported_at_once_binary() -> None:
    headers = {"ce-specversion": "0.9", "ce-type": "com.example.nope", "ce-subject": "",
               "ce-time": "yesterday", "ce-Bad_Ext": "x", "content-type": "application/json"}
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(headers, b"{not json")
    errors = info.value.errors
    assert set(errors) == {"specversion", "id", "source", "type", "subject", "time", "bad_ext",
                           "data"}
    assert errors["id"] == errors["source"] == "missing"
    assert "unknown event type" in errors["type"]
    assert "invalid JSON" in errors["data"]


def test_every_bad_field_reported_at_once_structured() -> None:
    body = json.dumps({"specversion": 1.0, "type": "", "source": 5, "time": "2020-01-01T00:00:00",
                       "data": {}, "data_base64": "AA=="}).encode()
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http({"content-type": "application/cloudevents+json"}, body)
    assert set(info.value.errors) == {"specversion", "id", "type", "source", "time",
                                      "data_base64"}
    assert "time zone" in info.value.errors["time"]


def test_structured_invalid_json_and_non_object() -> None:
    ct = {"content-type": "application/cloudevents+json; charset=utf-8"}
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(ct, b"{")
    assert list(info.value.errors) == ["body"]
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(ct, b"[1]")
    assert list(info.value.errors) == ["body"]


def test_catalog_data_is_checked_on_decode() -> None:
    headers = dict(GOOD, **{"ce-type": "dev.surefoot.gpu.xid"})
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(headers, b'{"node": "n1", "xid": "x"}')
    assert set(info.value.errors) == {"data.xid", "data.severity", "data.action", "data.fatal"}
    headers = dict(GOOD, **{"content-type": "text/plain"})
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http(headers, b"node n1")
    assert set(info.value.errors) == {"datacontenttype", "data"}


def test_unsupported_content_type() -> None:
    with pytest.raises(ev.UnsupportedContentTypeError):
        ev.from_http({"content-type": "application/json"}, b"{}")
    with pytest.raises(ev.UnsupportedContentTypeError):
        ev.from_http({"content-type": "application/cloudevents-batch+json"}, b"[]")
    with pytest.raises(ev.UnsupportedContentTypeError):
        ev.from_http({}, b"")


def test_any_type_when_policy_is_none() -> None:
    headers = dict(GOOD, **{"ce-type": "com.example.x"})
    assert ev.from_http(headers, b"{}", accept=None).type == "com.example.x"


def test_non_dict_json_data_and_text_round_trip_in_binary() -> None:
    for data in (["Hello", "x"], "Hello", 5, None):
        event = ev.Event(type="com.example.x", source="/s", id="1", data=data)
        msg = ev.to_binary(event)
        assert ev.from_http(msg.headers, msg.body, accept=None).data == data
    text = ev.Event(type="com.example.x", source="/s", id="1", data="<a/>",
                    datacontenttype="application/xml")
    msg = ev.to_binary(text)
    assert msg.body == b"<a/>"
    assert ev.from_http(msg.headers, msg.body, accept=None) == text


def test_bytes_data_in_structured_mode_uses_data_base64() -> None:
    event = ev.Event(type="com.example.x", source="/s", id="1", data=b"\x00\xff",
                     datacontenttype="application/octet-stream")
    msg = ev.to_structured(event)
    assert "data_base64" in json.loads(msg.body)
    assert ev.from_http(msg.headers, msg.body, accept=None).data == b"\x00\xff"


def test_percent_encoded_header_values() -> None:
    event = ev.build(ev.NodeReady(node="n 1"), source="/s", subject="node/n 1 ü")
    msg = ev.to_binary(event)
    assert " " not in msg.headers["ce-subject"]
    assert ev.from_http(msg.headers, msg.body).subject == "node/n 1 ü"


def test_specversion_03_is_accepted() -> None:
    headers = dict(GOOD, **{"ce-specversion": "0.3"})
    event = ev.from_http(headers, b'{"node":"n1"}')
    assert event.specversion == "0.3"
    msg = ev.to_binary(event)
    assert msg.headers["ce-specversion"] == "0.3"


def test_structured_extension_values_must_be_primitive() -> None:
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.example.x",
                       "ext": {"nested": 1}, "count": 3, "flag": True}).encode()
    with pytest.raises(ev.EventValidationError) as info:
        ev.from_http({"content-type": "application/cloudevents+json"}, body, accept=None)
    assert info.value.errors == {"ext": "extension values are strings, numbers or booleans"}
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.example.x",
                       "count": 3, "flag": True}).encode()
    event = ev.from_http({"content-type": "application/cloudevents+json"}, body, accept=None)
    assert event.extensions == {"count": "3", "flag": "true"}

"""The receiver building block: status codes, JSON errors naming every field, replies."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask

import events as ev

GOOD = {
    "ce-specversion": "1.0",
    "ce-id": "abc",
    "ce-source": "/src",
    "ce-type": "dev.surefoot.node.ready",
    "content-type": "application/json",
}


def make(handler: Any = None, **settings: Any) -> tuple[Any, list[ev.Event]]:
    got: list[ev.Event] = []

    def default(event: ev.Event) -> None:
        got.append(event)

    app = ev.create_app(ev.ReceiverSettings(**settings), handler or default)
    return app.test_client(), got


def test_binary_accepted_202() -> None:
    client, got = make()
    resp = client.post("/", headers=GOOD, data=b'{"node":"n1"}')
    assert resp.status_code == 202
    assert resp.data == b""
    assert got[0].id == "abc"
    assert ev.payload_of(got[0]) == ev.NodeReady(node="n1")


def test_structured_accepted() -> None:
    client, got = make()
    event = ev.build(ev.NodeReady(node="n1"), source="/s")
    msg = ev.to_structured(event)
    assert client.post("/", headers=msg.headers, data=msg.body).status_code == 202
    assert got == [event]


def test_400_names_every_bad_field() -> None:
    client, got = make()
    resp = client.post("/", headers={"ce-specversion": "2.0", "ce-type": "dev.surefoot.nope",
                                     "content-type": "application/json"}, data=b"{oops")
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == "invalid CloudEvent"
    assert set(body["fields"]) == {"specversion", "id", "source", "type", "data"}
    assert got == []


@pytest.mark.parametrize(
    ("drop", "field"), [("ce-id", "id"), ("ce-source", "source"), ("ce-type", "type"),
                        ("ce-specversion", "specversion")]
)
def test_400_for_each_missing_required_attribute(drop: str, field: str) -> None:
    client, _ = make()
    headers = {k: v for k, v in GOOD.items() if k != drop}
    resp = client.post("/", headers=headers, data=b'{"node":"n1"}')
    assert resp.status_code == 400
    assert resp.get_json()["fields"] == {field: "missing"}


def test_400_unknown_type_and_bad_data_fields() -> None:
    client, _ = make()
    resp = client.post("/", headers=dict(GOOD, **{"ce-type": "com.example.x"}), data=b"{}")
    assert resp.status_code == 400
    assert "type" in resp.get_json()["fields"]
    resp = client.post("/", headers=dict(GOOD, **{"ce-type": "dev.surefoot.gpu.lost"}),
                       data=b'{"node": 1}')
    assert resp.get_json()["fields"] == {"data.node": "must be a string",
                                         "data.reason": "missing"}


def test_400_structured_invalid_json() -> None:
    client, _ = make()
    resp = client.post("/", headers={"content-type": "application/cloudevents+json"}, data=b"{")
    assert resp.status_code == 400
    assert list(resp.get_json()["fields"]) == ["body"]


def test_413_oversized_body() -> None:
    client, got = make(max_body_bytes=64)
    resp = client.post("/", headers=GOOD, data=json.dumps({"node": "n" * 100}).encode())
    assert resp.status_code == 413
    assert "body" in resp.get_json()["fields"]
    assert got == []


def test_413_oversized_chunked_body_on_a_blueprint() -> None:
    # No MAX_CONTENT_LENGTH on this app and no Content-Length: the receiver still stops.
    app = Flask("t")
    app.register_blueprint(ev.receiver_blueprint("r", lambda e: None,
                                                 ev.ReceiverSettings(max_body_bytes=16)))

    body = b'{"node":"' + b"x" * 64 + b'"}'
    resp = app.test_client().post("/", headers=GOOD, input_stream=io.BytesIO(body),
                                  environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 413


@pytest.mark.parametrize("ct", ["application/json", "text/plain",
                                "application/cloudevents-batch+json", None])
def test_415_without_ce_headers_or_structured_type(ct: str | None) -> None:
    client, _ = make()
    headers = {"content-type": ct} if ct else {}
    resp = client.post("/", headers=headers, data=b"{}")
    assert resp.status_code == 415
    assert "content-type" in resp.get_json()["fields"]


def test_reply_event_in_binary_mode() -> None:
    def handler(event: ev.Event) -> ev.Event:
        return ev.build(ev.BreakerOpened(scope="node", name="n1", cause_event_id=event.id),
                        source="/fn", id="reply-1")

    client, _ = make(handler)
    resp = client.post("/", headers=GOOD, data=b'{"node":"n1"}')
    assert resp.status_code == 200
    assert resp.headers["ce-id"] == "reply-1"
    assert resp.headers["ce-type"] == "dev.surefoot.breaker.opened"
    reply = ev.from_http(dict(resp.headers), resp.data)
    assert ev.payload_of(reply).cause_event_id == "abc"  # type: ignore[attr-defined]


def test_reply_in_structured_mode_when_asked() -> None:
    client, _ = make(lambda e: e, reply_structured=True)
    resp = client.post("/", headers=GOOD, data=b'{"node":"n1"}')
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/cloudevents+json")


def test_handler_errors_map_to_status() -> None:
    def temporary(event: ev.Event) -> None:
        raise ev.TemporaryError("redis down")

    def permanent(event: ev.Event) -> None:
        raise ev.PermanentError("cannot act on this")

    def crash(event: ev.Event) -> None:
        raise RuntimeError("bug")

    assert make(temporary)[0].post("/", headers=GOOD, data=b'{"node":"n1"}').status_code == 503
    assert make(permanent)[0].post("/", headers=GOOD, data=b'{"node":"n1"}').status_code == 422
    resp = make(crash)[0].post("/", headers=GOOD, data=b'{"node":"n1"}')
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "handler failed: RuntimeError"


def test_get_is_not_allowed_and_healthz_answers() -> None:
    client, _ = make()
    assert client.get("/").status_code == 405
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_knative_events_mapped_for_the_handler() -> None:
    client, got = make(map_knative=True)
    pod = {"kind": "Pod", "metadata": {"name": "p1", "namespace": "default", "uid": "u1"},
           "spec": {"nodeName": "n1"}}
    headers = dict(GOOD, **{"ce-type": "dev.knative.apiserver.resource.delete",
                            "ce-id": "k1", "ce-source": "https://10.0.0.1:443"})
    assert client.post("/", headers=headers, data=json.dumps(pod)).status_code == 202
    (event,) = got
    assert event.type == "dev.surefoot.pod.deleted"
    assert event.id == "k1.deleted"
    assert event.extensions["origintype"] == "dev.knative.apiserver.resource.delete"
    assert ev.payload_of(event) == ev.PodDeleted(namespace="default", pod="p1", node="n1",
                                                 uid="u1")


def test_knative_events_unmapped_by_default() -> None:
    client, got = make()
    headers = dict(GOOD, **{"ce-type": "dev.knative.sources.ping"})
    assert client.post("/", headers=headers, data=b'{"x":1}').status_code == 202
    assert got[0].type == "dev.knative.sources.ping"

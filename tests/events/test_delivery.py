"""The sender: retry classification, backoff with jitter, dead letters (file and URL)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import events as ev

EVENT = ev.build(ev.NodeReady(node="n1"), source="/test", id="e-1")
URL = "http://subscriber.test/"


def scripted(*answers: Any) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next item: an int status or an exception."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return httpx.Response(item, content=b"nope" if item >= 300 else b"")

    return httpx.MockTransport(handle), seen


def sender(transport: httpx.BaseTransport, sleeps: list[float] | None = None,
           dead_letter: Any = None, **retry: Any) -> ev.Sender:
    settings = ev.SenderSettings(retry=ev.RetryPolicy(**retry))
    return ev.Sender(settings, transport=transport,
                     sleep=(sleeps.append if sleeps is not None else lambda s: None),
                     rand=lambda: 0.5, dead_letter=dead_letter)


def test_binary_mode_by_default_and_structured_optional() -> None:
    transport, seen = scripted(202)
    with sender(transport) as s:
        assert s.send(EVENT, URL).ok
    assert seen[0].headers["ce-id"] == "e-1"
    assert json.loads(seen[0].content) == {"node": "n1"}
    transport, seen = scripted(202)
    with ev.Sender(ev.SenderSettings(mode="structured"), transport=transport) as s:
        assert s.send(EVENT, URL).ok
    assert seen[0].headers["content-type"] == "application/cloudevents+json"
    assert json.loads(seen[0].content)["id"] == "e-1"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_temporary_statuses_are_retried(status: int) -> None:
    transport, seen = scripted(status, status, 202)
    sleeps: list[float] = []
    with sender(transport, sleeps) as s:
        result = s.send(EVENT, URL)
    assert result.ok
    assert result.attempts == 3
    assert len(seen) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 415, 422, 301])
def test_permanent_statuses_are_not_retried(status: int) -> None:
    transport, _seen = scripted(status)
    with sender(transport) as s:
        result = s.send(EVENT, URL)
    assert not result.ok
    assert result.attempts == 1
    assert result.status == status


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                                 httpx.RemoteProtocolError("eof"), httpx.PoolTimeout("pool")])
def test_transport_errors_are_temporary(exc: Exception) -> None:
    transport, _seen = scripted(exc, 200)
    with sender(transport) as s:
        assert s.send(EVENT, URL).attempts == 2


def test_send_once_raises_typed_errors() -> None:
    transport, _ = scripted(httpx.ConnectError("refused"))
    with sender(transport) as s, pytest.raises(ev.TemporaryDeliveryError) as info:
        s.send_once(EVENT, URL)
    assert info.value.status is None
    assert isinstance(info.value, ev.TemporaryError)
    transport, _ = scripted(404)
    with sender(transport) as s, pytest.raises(ev.PermanentDeliveryError) as info2:
        s.send_once(EVENT, URL)
    assert info2.value.status == 404
    assert isinstance(info2.value, ev.PermanentError)


def test_exponential_backoff_with_jitter_and_cap() -> None:
    p = ev.RetryPolicy(retries=6, backoff_delay_s=0.1, backoff_max_s=1.0, jitter=0.5)
    assert [p.delay(n, 0.0) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert p.delay(2, 1.0) == pytest.approx(0.1)  # jitter takes up to half away
    linear = ev.RetryPolicy(backoff_policy="linear", backoff_delay_s=0.1, jitter=0)
    assert [linear.delay(n, 0.3) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_sleeps_follow_the_policy_and_max_attempts() -> None:
    transport, seen = scripted(503)
    sleeps: list[float] = []
    with sender(transport, sleeps, retries=3, backoff_delay_s=0.2, jitter=0.5) as s:
        result = s.send(EVENT, URL)
    assert not result.ok
    assert result.attempts == 4
    assert len(seen) == 4
    assert sleeps == pytest.approx([0.15, 0.3, 0.6])  # rand=0.5 -> 75% of 0.2, 0.4, 0.8


def test_retry_after_is_honoured_within_the_cap() -> None:
    transport, _ = scripted(httpx.Response(429, headers={"retry-after": "3"}), 200)
    sleeps: list[float] = []
    with sender(transport, sleeps, backoff_delay_s=0.01, backoff_max_s=2.0) as s:
        assert s.send(EVENT, URL).ok
    assert sleeps == [2.0]


def test_dead_letter_file_carries_knative_error_extensions(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    transport, _ = scripted(503)
    settings = ev.SenderSettings(retry=ev.RetryPolicy(retries=2), dead_letter=str(path))
    with ev.Sender(settings, transport=transport, sleep=lambda s: None) as s:
        result = s.send(EVENT, URL)
    assert result.dead_lettered
    assert result.attempts == 3
    (dead,) = ev.read_dead_letters(str(path))
    assert dead.id == "e-1"
    assert dead.data == {"node": "n1"}
    assert dead.extensions["knativeerrordest"] == URL
    assert dead.extensions["knativeerrorcode"] == "503"
    assert base64.b64decode(dead.extensions["knativeerrordata"]) == b"nope"


def test_dead_letter_data_is_truncated_to_1024_bytes(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    transport, _ = scripted(httpx.Response(400, content=b"x" * 5000))
    with sender(transport, dead_letter=ev.FileDeadLetter(str(path))) as s:
        assert s.send(EVENT, URL).dead_lettered
    (dead,) = ev.read_dead_letters(str(path))
    assert len(base64.b64decode(dead.extensions["knativeerrordata"])) == 1024


def test_connection_failure_has_no_error_code(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    transport, _ = scripted(httpx.ConnectError("refused"))
    with sender(transport, retries=0, dead_letter=ev.FileDeadLetter(str(path))) as s:
        s.send(EVENT, URL)
    (dead,) = ev.read_dead_letters(str(path))
    assert "knativeerrorcode" not in dead.extensions
    assert "knativeerrordata" not in dead.extensions


def test_dead_letter_url() -> None:
    got: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return httpx.Response(202 if "dlq" in str(request.url) else 500, content=b"boom")

    settings = ev.SenderSettings(retry=ev.RetryPolicy(retries=1), dead_letter="http://dlq.test/")
    with ev.Sender(settings, transport=httpx.MockTransport(handle), sleep=lambda s: None) as s:
        result = s.send(EVENT, URL)
    assert result.dead_lettered
    assert [str(r.url) for r in got] == [URL, URL, "http://dlq.test/"]
    assert got[-1].headers["ce-knativeerrordest"] == URL
    assert got[-1].headers["ce-knativeerrorcode"] == "500"


def test_explicit_none_skips_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    transport, _ = scripted(400)
    with sender(transport, dead_letter=ev.FileDeadLetter(str(path))) as s:
        assert not s.send(EVENT, URL, dead_letter=None).dead_lettered
    assert not path.exists()


def test_reply_event_is_returned() -> None:
    reply = ev.build(ev.BreakerOpened(scope="node", name="n1"), source="/fn", id="r-1")
    msg = ev.to_binary(reply)
    transport, _ = scripted(httpx.Response(200, headers=msg.headers, content=msg.body))
    with sender(transport) as s:
        result = s.send(EVENT, URL)
    assert result.reply == reply


def test_malformed_reply_is_ignored() -> None:
    transport, _ = scripted(httpx.Response(200, headers={"ce-type": "x"}, content=b"{"))
    with sender(transport) as s:
        result = s.send(EVENT, URL)
    assert result.ok
    assert result.reply is None


def test_bad_settings_are_reported_at_once() -> None:
    with pytest.raises(ev.ConfigError) as info:
        ev.Sender(ev.SenderSettings(mode="smoke", retry=ev.RetryPolicy(retries=-1, jitter=2)))
    assert set(info.value.errors) == {"mode", "retry", "jitter"}


def test_parse_duration() -> None:
    assert ev.parse_duration("PT0.2S") == pytest.approx(0.2)
    assert ev.parse_duration("PT1M30S") == 90
    assert ev.parse_duration("P1DT1H") == 90000
    for bad in ("", "P", "PT", "1s", "PTS", "P1DT"):
        with pytest.raises(ValueError, match="not an ISO 8601 duration"):
            ev.parse_duration(bad)


def test_real_http_round_trip(tmp_path: Path) -> None:
    got: list[ev.Event] = []
    app = ev.create_app(ev.ReceiverSettings(), lambda e: got.append(e) or None)
    with ev.HttpServer(app) as server, ev.Sender() as s:
        results = [s.send(EVENT, server.url + "/") for _ in range(3)]
    assert all(r.ok and r.status == 202 for r in results)
    assert got == [EVENT] * 3


def test_real_connection_refused_goes_to_dead_letter(tmp_path: Path, free_port: int) -> None:
    path = tmp_path / "dead.jsonl"
    settings = ev.SenderSettings(timeout_s=1.0, retry=ev.RetryPolicy(retries=2),
                                 dead_letter=str(path))
    sleeps: list[float] = []
    with ev.Sender(settings, sleep=sleeps.append) as s:
        result = s.send(EVENT, f"http://127.0.0.1:{free_port}/")
    assert not result.ok
    assert result.attempts == 3
    assert result.dead_lettered
    assert len(sleeps) == 2
    assert len(ev.read_dead_letters(str(path))) == 1




def test_bad_url_is_permanent() -> None:
    with ev.Sender(sleep=lambda s: None) as s:
        result = s.send(EVENT, "ftp://nowhere/")
    assert not result.ok
    assert result.attempts == 1
    assert "invalid URL" in (result.error or "")


def test_a_failed_delivery_says_why_the_subscriber_refused(tmp_path: Path) -> None:
    """The subscriber's reason travels into the error (and the log line that drops or
    dead-letters the event), not only its status."""
    body = json.dumps({"error": "temporary failure: lock traffic:svc is held"}).encode()
    transport, seen = scripted(httpx.Response(503, content=body,
                                              headers={"content-type": "application/json"}))
    path = tmp_path / "dead.jsonl"
    s = sender(transport, retries=2, dead_letter=ev.FileDeadLetter(str(path)))
    result = s.send(EVENT, URL)
    assert len(seen) == 3
    assert result.dead_lettered
    assert result.error == "HTTP 503: temporary failure: lock traffic:svc is held"
    (dead,) = ev.read_dead_letters(str(path))
    assert dead.extensions["knativeerrorcode"] == "503"
    assert b"lock traffic:svc is held" in base64.b64decode(dead.extensions["knativeerrordata"])
    plain, _ = scripted(httpx.Response(500, content=b"<html>boom</html>"))
    assert sender(plain, retries=0).send(EVENT, URL).error == "HTTP 500: <html>boom</html>"

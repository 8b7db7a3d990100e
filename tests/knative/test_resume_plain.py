"""Non-streamed requests resumed, and tries that send no first event, across real replicas:
`surefoot serve` processes behind a real gateway HTTP server. A replica is SIGKILLed or
SIGSTOPped mid-generation of a plain (non-streamed) completion or chat, or frozen before its
first event; the client still gets the answer an uninterrupted replica gives (greedy), in the
OpenAI shape a replica answers with."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from knative.breakers import BreakerRegistry, BreakerRegistrySettings, BreakerSettings
from knative.gateway import _resume
from tests.knative.test_resume_gateway import CHAT, Gateway, Replica, content, stream

openai = pytest.importorskip("openai")

COMPLETION = {"model": "gemma-3-270m", "temperature": 0, "max_tokens": 120,
              "prompt": "The numbers from 1 to 60, separated by commas: 1, 2,"}


@pytest.fixture
def replicas() -> Iterator[dict[str, Replica]]:
    reps = {n: Replica(n) for n in ("r1", "r2", "r3")}
    try:
        deadline = time.monotonic() + 120
        for r in reps.values():
            r.wait_ready(deadline)
        yield reps
    finally:
        for r in reps.values():
            r.stop()


@pytest.fixture
def registry(redis_url: str) -> Iterator[BreakerRegistry]:
    policy = BreakerSettings(window_size=5, minimum_calls=1, wait_in_open=60.0)
    reg = BreakerRegistry(BreakerRegistrySettings(redis_url=redis_url, policy=policy))
    assert reg.wait_ready()
    yield reg
    reg.close()


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def on_tokens(monkeypatch: pytest.MonkeyPatch, n: int, act: Any) -> None:
    """Run ``act()`` once, as soon as the gateway has passed on ``n`` token ids of a stream
    (a spy on the gateway's tracker: what it does is unchanged)."""
    take = _resume.Tracker.take
    fired = threading.Event()

    def spy(self: _resume.Tracker, events: bytes) -> bytes:
        out = take(self, events)
        if len(self.ids) >= n and not fired.is_set():
            fired.set()
            act()
        return out

    monkeypatch.setattr(_resume.Tracker, "take", spy)


def same_shape(got: dict[str, Any], direct: dict[str, Any]) -> None:
    """The answer has the fields a replica's own answer has, at every level."""
    assert set(got) == set(direct)
    assert set(got["choices"][0]) == set(direct["choices"][0])
    if "message" in direct["choices"][0]:
        assert set(got["choices"][0]["message"]) == set(direct["choices"][0]["message"])
    assert set(got["usage"]) == set(direct["usage"])
    assert got["object"] == direct["object"]
    assert got["id"].split("-")[0] == direct["id"].split("-")[0]
    assert isinstance(got["created"], int)


def test_plain_chat_survives_sigkill_mid_generation(replicas, monkeypatch) -> None:
    g = Gateway(replicas, None)
    try:
        ref = post(g.url, "/v1/chat/completions", CHAT).json()
        direct = post(replicas["r3"].url, "/v1/chat/completions", CHAT).json()
        streamed, _ = stream(g.url, CHAT)
        assert ref["usage"]["completion_tokens"] > 40
        assert ref["choices"][0]["message"]["content"] == content(streamed[:-1])
        victim: list[str] = []

        def kill() -> None:
            # the replica on the gateway's only live try
            for name, r in replicas.items():
                if g.gw.inflight.tries(r.url):
                    victim.append(name)
                    r.signal(signal.SIGKILL)

        on_tokens(monkeypatch, 12, kill)
        r = post(g.url, "/v1/chat/completions", CHAT)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        got = r.json()
        assert len(victim) == 1
        assert replicas[victim[0]].proc.wait(10) is not None
        same_shape(got, direct)
        assert got["choices"][0]["message"] == ref["choices"][0]["message"]
        assert got["choices"][0]["finish_reason"] == ref["choices"][0]["finish_reason"]
        assert got["usage"] == ref["usage"]
        assert "surefoot_resume" not in r.text
        m = g.gw.metrics
        assert m.get("resume_broken") == 1
        assert m.resumes("broken") == 1
        assert m.get("resumed_tokens") >= 12
    finally:
        g.close()


def test_plain_completion_survives_sigstop_mid_generation(replicas, monkeypatch,
                                                          registry) -> None:
    g = Gateway(replicas, registry)
    try:
        client = openai.OpenAI(base_url=f"{g.url}/v1", api_key="unused", max_retries=0)
        ref = client.completions.create(**COMPLETION)
        direct = post(replicas["r3"].url, "/v1/completions", COMPLETION).json()
        assert ref.usage.completion_tokens > 40
        victim: list[str] = []

        def freeze() -> None:
            for name, r in replicas.items():
                if g.gw.inflight.tries(r.url):
                    victim.append(name)
                    r.signal(signal.SIGSTOP)

        on_tokens(monkeypatch, 12, freeze)
        raw = client.completions.with_raw_response.create(**COMPLETION)
        got = raw.parse()
        assert len(victim) == 1
        same_shape(raw.http_response.json(), direct)
        assert got.choices[0].text == ref.choices[0].text
        assert got.choices[0].finish_reason == ref.choices[0].finish_reason
        assert got.usage == ref.usage
        assert g.gw.metrics.get("resume_stalled") == 1
        assert g.gw.metrics.resumes("stalled") == 1
        key = f"replica:{victim[0]}"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
                registry.view().get(key) is None or registry.view()[key].state != "open"):
            time.sleep(0.05)
        assert registry.view()[key].state == "open"
    finally:
        g.close()


def test_a_replica_frozen_before_its_first_event_is_left_for_another(replicas,
                                                                     registry) -> None:
    plain = Gateway(replicas, None)  # the references: no result on the breakers
    ref_chat = post(plain.url, "/v1/chat/completions", CHAT).json()
    ref_stream, _ = stream(plain.url, CHAT)
    plain.close()
    g = Gateway(replicas, registry, primaries=("r1",), first_event_timeout_min=0.5,
                first_event_timeout_max=1.0)
    try:
        replicas["r1"].signal(signal.SIGSTOP)
        t0 = time.monotonic()
        chunks, replica = stream(g.url, CHAT)
        took_stream = time.monotonic() - t0
        assert replica == "r3"
        assert chunks[-1] == "[DONE]"
        assert content(chunks[:-1]) == content(ref_stream[:-1])
        key = "replica:r1"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
                registry.view().get(key) is None or registry.view()[key].state != "open"):
            time.sleep(0.05)
        assert registry.view()[key].state == "open"  # new requests avoid it
        assert took_stream < 30  # the try timeout is 60 s
        m = g.gw.metrics
        assert m.get("resume_first_event") == 1
        assert m.resumes("first_event") == 1
        assert m.get("upstream_first_event_timeout") == 1
        r = post(g.url, "/v1/chat/completions", CHAT)
        assert r.status_code == 200
        assert r.headers["x-surefoot-replica"] == "r3"
        assert r.json()["choices"][0]["message"] == ref_chat["choices"][0]["message"]
    finally:
        g.close()


def test_a_plain_request_on_a_replica_frozen_before_its_first_event(replicas) -> None:
    g = Gateway(replicas, None, primaries=("r1",), first_event_timeout_min=0.5,
                first_event_timeout_max=1.0)
    try:
        ref = post(g.url, "/v1/completions", COMPLETION).json()
        replicas["r1"].signal(signal.SIGSTOP)
        t0 = time.monotonic()
        r = post(g.url, "/v1/completions", COMPLETION)
        assert time.monotonic() - t0 < 30
        assert r.status_code == 200, r.text
        assert r.headers["x-surefoot-replica"] == "r3"
        assert r.json()["choices"] == ref["choices"]
        assert g.gw.metrics.resumes("first_event") == 1
    finally:
        g.close()


def test_a_replica_killed_before_its_first_event_is_left_at_once(replicas) -> None:
    # a first-event timeout far away: the kill itself sends the request on
    g = Gateway(replicas, None, primaries=("r1",), first_event_timeout_min=50.0,
                first_event_timeout_max=50.0)
    try:
        ref = post(g.url, "/v1/chat/completions", CHAT).json()
        replicas["r1"].signal(signal.SIGSTOP)
        out: list[httpx.Response] = []
        t = threading.Thread(target=lambda: out.append(post(g.url, "/v1/chat/completions",
                                                            CHAT)))
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not g.gw.inflight.tries(replicas["r1"].url):
            time.sleep(0.01)
        assert g.gw.inflight.tries(replicas["r1"].url) == 1
        t0 = time.monotonic()
        replicas["r1"].signal(signal.SIGKILL)
        t.join(60)
        assert time.monotonic() - t0 < 30
        assert out[0].status_code == 200, out[0].text
        assert out[0].headers["x-surefoot-replica"] == "r3"
        assert out[0].json()["choices"] == ref["choices"]
        assert g.gw.metrics.resumes("first_event") == 0
        assert g.gw.metrics.get("upstream_upstream_connection_error") == 1
    finally:
        g.close()

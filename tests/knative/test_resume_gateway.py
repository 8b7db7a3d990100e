"""Streams resumed across real replicas: `surefoot serve` processes behind a real gateway HTTP
server; one is SIGKILLed or SIGSTOPped mid-stream and the client still gets the stream an
uninterrupted replica sends (greedy), through httpx and through the openai client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from knative.breakers import BreakerRegistry, BreakerRegistrySettings, BreakerSettings
from knative.gateway import (
    Endpoint,
    GatewaySettings,
    Route,
    RoutingTable,
    StaticResolver,
    create_gateway_app,
    gateway_of,
)

openai = pytest.importorskip("openai")

TOKEN = "internal-s3cret"
CHAT = {"model": "gemma-3-270m", "temperature": 0, "max_tokens": 160,
        "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `surefoot serve` in a process group of its own (killed or frozen whole)."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or _port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port",
               str(self.port), "--embedding-model", "", "--n-ctx", "512", "--max-tokens",
               "256", "--replica", name]
        env = {**os.environ, "SUREFOOT_INTERNAL_TOKEN": TOKEN, "SUREFOOT_N_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica {self.name} exited"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {self.name} not ready")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
        self.proc.wait(30)


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


class Gateway:
    def __init__(self, reps: dict[str, Replica], registry: BreakerRegistry | None,
                 primaries: tuple[str, ...] = ("r1", "r2"), **kw: Any) -> None:
        routes = (Route("primary", 100, tuple(Endpoint(reps[n].url, replica=n)
                                              for n in primaries)),)
        table = RoutingTable(routes, Route("fallback", 0, (Endpoint(reps["r3"].url, "r3"),)))
        settings = GatewaySettings(**{"internal_token": TOKEN, "stall_timeout_min": 0.5,
                                      "stall_timeout_max": 2.0, "deadline": 120.0,
                                      "try_timeout": 60.0, **kw})
        self.app = create_gateway_app(settings, StaticResolver(table), registry)
        self.gw = gateway_of(self.app)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def gateway(replicas) -> Iterator[Gateway]:
    g = Gateway(replicas, None)
    yield g
    g.close()


def stream(url: str, body: dict[str, Any], on_chunk: Any = None) -> tuple[list[Any], str]:
    """The decoded chunks of one streamed chat (``[DONE]`` last) and the answering replica;
    ``on_chunk(n, replica)`` runs after the n-th chunk."""
    out: list[Any] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                      json={**body, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        replica = r.headers["x-surefoot-replica"]
        buf = ""
        for piece in r.iter_text():
            buf += piece
            while "\n\n" in buf:
                ev, buf = buf.split("\n\n", 1)
                data = ev[len("data: "):]
                out.append("[DONE]" if data == "[DONE]" else json.loads(data))
                if on_chunk is not None:
                    on_chunk(len(out), replica)
    return out, replica


def content(chunks: list[Any]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks
                   if isinstance(c, dict) and c.get("choices"))


def check_one_stream(chunks: list[Any], ref: list[Any]) -> None:
    assert chunks[-1] == "[DONE]", chunks[-3:]
    body = chunks[:-1]
    assert all("error" not in c for c in body)
    assert len({c["id"] for c in body}) == 1
    assert len({c["created"] for c in body}) == 1
    roles = [c for c in body if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in body
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == [f for f in (c["choices"][0]["finish_reason"] for c in ref[:-1]
                                    if c["choices"]) if f]
    assert not any("surefoot_resume" in json.dumps(c) for c in body)
    assert content(body) == content(ref[:-1])
    assert body[-1]["usage"] == ref[-2]["usage"]


def killed_at(replicas, gateway, body: dict[str, Any], at: int) -> list[Any]:
    """The stream of ``body`` whose replica is SIGKILLed after its ``at``-th chunk, checked
    to be the uninterrupted one."""
    ref, _ = stream(gateway.url, body)

    def kill(n: int, replica: str) -> None:
        if n == at:
            replicas[replica].signal(signal.SIGKILL)

    chunks, victim = stream(gateway.url, body, kill)
    assert replicas[victim].proc.wait(10) is not None
    check_one_stream(chunks, ref)
    return chunks


def test_sigkill_mid_stream_resumes_on_another_replica(replicas, gateway) -> None:
    chunks = killed_at(replicas, gateway, CHAT, 6)
    assert chunks[-2]["usage"]["completion_tokens"] > 40
    m = gateway.gw.metrics
    assert m.get("resume_broken") == 1
    assert m.get("resumed_tokens") >= 1
    assert m.get("stream_broken") == 0


def test_a_json_stream_killed_mid_object_resumes_still_valid_json(replicas, gateway) -> None:
    # the grammar of response_format goes on past the tokens so far: the object is whole
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "colour"],
              "properties": {"name": {"type": "string", "maxLength": 40},
                             "colour": {"type": "string", "maxLength": 40}}}
    body = {"messages": [{"role": "user", "content": "Describe a cat as JSON."}],
            "max_tokens": 120, "temperature": 0,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "cat", "strict": True,
                                                "schema": schema}}}
    chunks = killed_at(replicas, gateway, body, 5)
    assert chunks[-2]["usage"]["completion_tokens"] > 8
    assert set(json.loads(content(chunks[:-1]))) == {"name", "colour"}
    assert gateway.gw.metrics.get("resume_broken") == 1


def test_sigstop_mid_stream_resumes_and_the_breaker_records_it(replicas, registry) -> None:
    g = Gateway(replicas, registry)
    try:
        client = openai.OpenAI(base_url=f"{g.url}/v1", api_key="unused", max_retries=0)
        ref = client.chat.completions.create(**CHAT, stream=True,
                                             stream_options={"include_usage": True})
        ref_chunks = list(ref)
        raw = client.chat.completions.with_raw_response.create(
            **CHAT, stream=True, stream_options={"include_usage": True})
        victim = raw.headers["x-surefoot-replica"]
        chunks = []
        for n, chunk in enumerate(raw.parse(), 1):
            chunks.append(chunk)
            if n == 6:
                replicas[victim].signal(signal.SIGSTOP)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        want = "".join(c.choices[0].delta.content or "" for c in ref_chunks if c.choices)
        assert text == want
        assert len({c.id for c in chunks}) == 1
        assert [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason] == [ref_chunks[-2].choices[0].finish_reason]
        assert chunks[-1].usage == ref_chunks[-1].usage
        assert g.gw.metrics.get("resume_stalled") == 1
        # the frozen replica's breaker recorded the stall: new requests avoid it
        deadline = time.monotonic() + 5
        key = f"replica:{victim}"
        while time.monotonic() < deadline and (
                registry.view().get(key) is None or registry.view()[key].state != "open"):
            time.sleep(0.05)
        assert registry.view()[key].state == "open"
    finally:
        g.close()


def test_a_client_sent_resume_field_is_refused_through_the_gateway(replicas, gateway) -> None:
    body = {**CHAT, "stream": True,
            "surefoot_resume": {"tokens": [1], "chars": 0, "id": "x", "created": 1}}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30,
                   headers={"X-Surefoot-Internal": TOKEN})  # stripped by the gateway
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "surefoot_resume"
    r = httpx.post(f"{replicas['r1'].url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "surefoot_resume"

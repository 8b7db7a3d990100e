"""The drill's own instruments, against real HTTP where they talk to a server: the streaming
client's verdict on each stream, the capacity watch, and how the verdict treats the compound
phase's failures."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from surefoot._drill_compound import CapacityWatch, capacity
from surefoot._drill_load import Sample, StreamLoad
from surefoot._drill_report import format_report, summarise

OK = [b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}',
      b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}', b"data: [DONE]"]
SCRIPTS = {
    "ok": OK,
    "cut": OK[:1],  # the connection closes mid-stream
    "error": [OK[0], b'data: {"error":{"message":"no ready replica left to try"}}',
              b"data: [DONE]"],
    "no_done": OK[:2],
}


class _Handler(BaseHTTPRequestHandler):
    script = "ok"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-surefoot-replica", "r-1")
        self.send_header("connection", "close")
        self.end_headers()
        for line in SCRIPTS[type(self).script]:
            self.wfile.write(line + b"\n\n")
            self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sse_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("script", "ok", "words"), [
    ("ok", True, ""), ("cut", False, "broken"), ("error", False, "no ready replica left"),
    ("no_done", False, "broken")])
def test_stream_client_judges_each_stream(sse_server: Any, script: str, ok: bool,
                                          words: str) -> None:
    url, handler = sse_server
    handler.script = script
    load = StreamLoad(url, 1, 8)
    sample = load._one(0)
    assert sample.ok is ok
    assert words in sample.error
    assert sample.kind == "stream"
    assert sample.replica == "r-1"


def _replica(rev: str, ready: bool, node: str = "n1") -> Any:
    return SimpleNamespace(revision=rev, ready=ready, phase="Running", node=node, name=rev)


def test_capacity_watch_tells_when_some_replica_was_ready() -> None:
    watch = CapacityWatch(SimpleNamespace(), "svc")
    watch.samples = [(10.0, {"p": 1, "f": 0}), (11.0, {"p": 0, "f": 0}),
                     (12.0, {"p": 0, "f": 0}), (13.0, {"p": 0, "f": 2})]
    assert watch.any_ready(9.5, 10.5)
    assert not watch.any_ready(11.0, 12.5)
    assert not watch.any_ready(12.2, 12.8)  # no sample inside: the one before counts
    assert watch.any_ready(12.5, 13.5)
    platform = SimpleNamespace(replicas=lambda svc: [_replica("p", True), _replica("p", False),
                                                     _replica("f", True)])
    assert capacity(platform, "svc") == {"f": "1/1", "p": "1/2"}


def _report(failed_while_ready: int) -> dict[str, Any]:
    return {"rate": 1, "phases": {"compound": {
        "failed": 3, "failed_while_ready": failed_while_ready, "requests": 5, "steps": [],
        "cordoned_before": ["node-9"]}}}


def test_compound_failures_with_nothing_ready_are_excused_and_no_others() -> None:
    samples = [Sample(float(i), i + 0.5, 503 if i < 3 else 200) for i in range(5)]
    window = {"compound": (0.0, 10.0)}
    report = _report(0)
    summarise(report, samples, window, [], 0.0)
    assert report["continuity"]["pass"]
    assert report["continuity"]["failed_with_no_replica_ready"] == 3
    assert report["checks"]["compound: 0 failed while a replica was ready"]
    report = _report(1)
    summarise(report, samples, window, [], 0.0)
    assert not report["continuity"]["pass"]
    assert report["continuity"]["failed"] == 1
    assert "FAIL  compound: 0 failed while a replica was ready" in format_report(report)
    assert "cordoned before: node-9" in format_report(report)


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_gateway_events_are_summed_over_every_gateway() -> None:
    from surefoot._drill_abrupt import gateway_events

    servers = []
    for n in (2, 5):
        handler = type("M", (_Metrics,), {"body": (
            f'surefoot_gateway_events_total{{event="resume_broken"}} {n}.0\n'
            'surefoot_gateway_events_total{event="retries"} 1.0\n').encode()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        assert gateway_events([*urls, "http://127.0.0.1:9"]) == {
            "resume_broken": 7.0, "retries": 2.0}
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


class _Platform:
    """Records what the compound phase asks of a platform with one node cordoned before."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.down = {"node-9"}

    def nodes(self) -> list[Any]:
        return [SimpleNamespace(name=n, unschedulable=n in self.down)
                for n in ("node-1", "node-2", "node-9")]

    def replicas(self, service: str) -> list[Any]:
        return [_replica("p", True, "node-9"), _replica("p", True, "node-1")]

    def cordon(self, node: str) -> None:
        self.calls.append(("cordon", node))
        self.down.add(node)

    def uncordon(self, node: str) -> None:
        self.calls.append(("uncordon", node))
        self.down.discard(node)

    def evict(self, node: str, timeout: float) -> Any:
        self.calls.append(("evict", node))
        return SimpleNamespace(evicted=[])

    def label(self, node: str, key: str, value: str | None) -> None:
        self.calls.append(("label", node))


def test_compound_leaves_nodes_cordoned_before_it_alone() -> None:
    from surefoot._drill_compound import CompoundPhase

    platform = _Platform()
    target = SimpleNamespace(platform=platform, service="svc", primary_revision="p",
                             fallback_revision="", broker_url="", redis_url="")
    phase = CompoundPhase(target, lambda m: 0.0, lambda m: None, hold=0.0)
    phase.cordoned_before = ["node-9"]
    assert [r.node for r in phase._ready("p")] == ["node-1"]  # never a victim on node-9
    assert phase._evict_primary_node().startswith("evicted node-1")
    phase._cordoned.add("node-9")  # even were it touched, it is not the phase's to release
    phase._release()
    assert ("uncordon", "node-1") in platform.calls
    assert ("uncordon", "node-9") not in platform.calls

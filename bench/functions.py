"""Reaction time of the functions: event received -> breaker open, event received -> traffic patch.

Targets (issue "functions: trip_breaker, reroute_traffic, ..."):
  event received -> breaker open in Redis   <= 5 ms p99
  event received -> traffic patch sent      <= 50 ms p99 (observed at the fake Kubernetes API)

Setup, all in this process: an embedded Redis, the fake Kubernetes API server (real HTTP) with
the service, its two revisions and four nodes, and the functions host on a real port
(``FunctionsServer``: werkzeug, threaded). A lean keep-alive client POSTs binary-mode events.

- breaker: a fatal XID for a fresh node to ``/trip_breaker``. Two figures per event: the POST
  round trip (the host answers after the Lua script opened the breaker, so this bounds "open in
  Redis" from above) and the arrival of the transition on the breakers' pub/sub channel (what a
  gateway hears). Baselines in the same run: the same POST to a bare CloudEvents receiver that
  does nothing (the HTTP + CloudEvents floor) and ``BreakerStore.open`` called directly.
- traffic: ``breaker.opened`` for the primary revision to ``/reroute_traffic``, from sending to
  the moment the fake API server has applied the PATCH of the service's traffic (the traffic is
  reset between events without going through the API). Baseline: ``platform.set_traffic``
  called directly (its GET + PATCH).

"Received" is measured two ways: from the client's send (includes the client, the loopback and
the HTTP server's request parsing) and in-process from the moment the host's WSGI app is
called with the request to the moment the breaker script returned / the fake API applied the
patch (same clock, same process).

Rounds interleave the measured and baseline sides; figures are pooled percentiles over every
sample, plus the median over rounds of each round's p50.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

import events as ev
from events import HttpServer
from functions import FunctionSettings, FunctionsServer, build_context
from knative import Target
from knative.breakers import (
    BreakerRegistrySettings,
    BreakerStore,
    EmbeddedRedis,
    node_key,
)
from knative.platforms.kube import KnativePlatform
from tests.functions._helpers import KSVC_PATH, make_cluster
from tests.kube_fake import FakeKubeServer

BREAKER_TARGET_MS = 5.0
TRAFFIC_TARGET_MS = 50.0
NORMAL = [{"revisionName": "surefoot-primary", "percent": 100, "tag": "primary"},
          {"revisionName": "surefoot-fallback", "percent": 0, "tag": "fallback"}]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


class Poster:
    """One keep-alive connection; POST a binary-mode event, return seconds and the status."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, event: ev.Event) -> tuple[float, float, int]:
        msg = ev.to_binary(event)
        t0 = time.perf_counter()
        self.conn.request("POST", path, body=msg.body, headers=dict(msg.headers))
        resp = self.conn.getresponse()
        resp.read()
        return t0, time.perf_counter(), resp.status

    def close(self) -> None:
        self.conn.close()


def fatal_xid(node: str) -> ev.Event:
    v = ev.classify(79)
    return ev.build(ev.GpuXid(node=node, xid=79, severity=v.severity, action=v.action,
                              fatal=v.fatal), source="/bench/gpu", id=str(uuid.uuid4()))


def primary_opened() -> ev.Event:
    return ev.build(ev.BreakerOpened(scope="revision", name="surefoot-primary", reason="bench"),
                    source="/bench/breakers", id=str(uuid.uuid4()))


class Arrivals:
    """Timestamps (perf_counter) of breaker transitions arriving on the pub/sub channel."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import json

        while not self._stop:
            msg = self.pubsub.get_message(timeout=0.2)
            if msg is None:
                continue
            at = time.perf_counter()
            key = json.loads(msg["data"])["key"]
            with self.cond:
                self.seen[key] = at
                self.cond.notify_all()

    def wait(self, key: str, timeout: float = 5.0) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: key in self.seen, timeout)
            return self.seen.get(key)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.pubsub.close()
        self.client.close()


class Bench:
    """The host on a real port over the fake cluster, its baselines, and every sample taken."""

    def __init__(self, rs: EmbeddedRedis, kube: FakeKubeServer) -> None:
        make_cluster(kube)
        self.kube = kube
        # the fake cluster runs no fallback pods: move the traffic without waiting for them
        self.settings = FunctionSettings(redis_url=rs.url, sweep_interval_s=0,
                                         fallback_ready_timeout_s=0)
        self.platform = KnativePlatform(kube.api_client(), "default")
        bsettings = BreakerRegistrySettings(redis_url=rs.url)
        self.ctx = build_context(self.settings, self.platform, breaker_settings=bsettings)
        self.direct = BreakerStore.from_url(bsettings)
        self.bare = HttpServer(ev.create_app(ev.ReceiverSettings(), lambda e: None)).start()
        self.arrivals = Arrivals(rs.url, self.direct.channel)
        # In-process marks: when the host's WSGI app got the request (the event is received:
        # the HTTP request is read and parsed by the server), when BreakerStore.open returned
        # (the script committed the transition in Redis) and when the fake API applied a PATCH
        # of the service.
        self.received: list[float] = []
        self.opened_at: list[float] = []
        self.patched: list[float] = []
        self.traffic_inproc: list[float] = []
        self._mark_patches()
        self._mark_opens()

    def _mark_patches(self) -> None:
        original_log = self.kube._log

        def log(record: Any) -> None:
            if record.method == "PATCH" and record.path == KSVC_PATH:
                self.patched.append(time.perf_counter())
            original_log(record)

        self.kube._log = log  # type: ignore[method-assign]

    def _mark_opens(self) -> None:
        store_open = self.ctx.breakers.open

        def timed_open(*a: Any, **kw: Any) -> Any:
            t = store_open(*a, **kw)
            self.opened_at.append(time.perf_counter())
            return t

        self.ctx.breakers.open = timed_open  # type: ignore[method-assign]

    def serve(self, server: FunctionsServer) -> None:
        """Mark the arrival of every request at ``server``'s app; connect the posters."""
        inner = server.app.wsgi_app

        def marked(environ: Any, start_response: Any) -> Any:
            self.received.append(time.perf_counter())
            return inner(environ, start_response)

        server.app.wsgi_app = marked  # type: ignore[method-assign]
        self.fn = Poster(server.url)
        self.floor = Poster(self.bare.url)

    def reset_traffic(self) -> None:
        self.kube.patch_object("services.serving.knative.dev", "surefoot",
                               {"spec": {"traffic": NORMAL}})
        self.ctx.redis.delete(self.ctx.key("traffic", "surefoot", "saved"))

    def breaker_round(self, n: int) -> tuple[list[float], list[float], list[float]]:
        rt, ps, inproc = [], [], []
        for _ in range(n):
            node = f"b-{uuid.uuid4().hex[:10]}"
            self.received.clear()
            self.opened_at.clear()
            t0, t1, status = self.fn.post("/trip_breaker", fatal_xid(node))
            assert status == 200, status
            at = self.arrivals.wait(node_key(node))
            rt.append((t1 - t0) * 1000)
            inproc.append((self.opened_at[0] - self.received[0]) * 1000)
            if at is not None:
                ps.append((at - t0) * 1000)
        return rt, ps, inproc

    def bare_round(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0, t1, status = self.floor.post("/", fatal_xid("x"))
            assert status == 202, status
            out.append((t1 - t0) * 1000)
        return out

    def direct_round(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            key = node_key(f"d-{uuid.uuid4().hex[:10]}")
            t0 = time.perf_counter()
            self.direct.open(key, "bench")
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def traffic_round(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            self.reset_traffic()
            self.patched.clear()
            self.received.clear()
            t0, _, status = self.fn.post("/reroute_traffic", primary_opened())
            assert status == 200, (status, self.patched)
            assert self.patched, (status, self.patched)
            out.append((self.patched[0] - t0) * 1000)
            self.traffic_inproc.append((self.patched[0] - self.received[0]) * 1000)
        return out

    def set_traffic_round(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            self.reset_traffic()
            t0 = time.perf_counter()
            self.platform.set_traffic("surefoot", [Target("surefoot-primary", 0, "primary"),
                                                   Target("surefoot-fallback", 100, "fallback")])
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def warm_up(self) -> None:
        """Connections, scripts, imports."""
        self.breaker_round(20)
        self.bare_round(20)
        self.direct_round(20)
        self.traffic_round(5)
        self.set_traffic_round(5)

    def run(self, rounds: int, breaker_events: int, traffic_events: int
            ) -> dict[str, list[list[float]]]:
        results: dict[str, list[list[float]]] = {
            k: [] for k in ("rt", "pubsub", "inproc", "bare", "direct", "traffic",
                            "traffic_inproc", "set_traffic")}
        for _ in range(rounds):
            rt, ps, inproc = self.breaker_round(breaker_events)
            results["rt"].append(rt)
            results["pubsub"].append(ps)
            results["inproc"].append(inproc)
            results["bare"].append(self.bare_round(breaker_events))
            results["direct"].append(self.direct_round(breaker_events))
            self.traffic_inproc = []
            results["traffic"].append(self.traffic_round(traffic_events))
            results["traffic_inproc"].append(self.traffic_inproc)
            results["set_traffic"].append(self.set_traffic_round(traffic_events))
        return results

    def close(self) -> None:
        self.fn.close()
        self.floor.close()
        self.arrivals.close()
        self.bare.stop()
        self.ctx.close()
        self.direct.client.close()


def row(results: dict[str, list[list[float]]], label: str, key: str,
        target: float | None = None) -> tuple[float, float]:
    pooled = [x for rnd in results[key] for x in rnd]
    p50s = [statistics.median(rnd) for rnd in results[key] if rnd]
    p50, p90, p99 = pct(pooled, 50), pct(pooled, 90), pct(pooled, 99)
    tail = ""
    if target is not None:
        verdict = "ok" if p99 <= target else "OVER"
        tail = f"  p99/target {p99 / target:5.2f} ({verdict}, target {target:g} ms)"
    print(f"  {label:<44} n={len(pooled):4d}  p50 {p50:7.3f}  p90 {p90:7.3f}  "
          f"p99 {p99:7.3f}  max {max(pooled):7.3f}  median-of-round-p50 "
          f"{statistics.median(p50s):7.3f}{tail}")
    return p50, p99


def report(results: dict[str, list[list[float]]], rounds: int, elapsed: float) -> None:
    print(f"functions reaction time ({rounds} rounds, {elapsed:.1f} s; milliseconds)")
    print("event received -> breaker open in Redis")
    row(results, "received by the host -> open committed", "inproc", BREAKER_TARGET_MS)
    row(results, "client send -> transition heard on pub/sub", "pubsub", BREAKER_TARGET_MS)
    rt50, _ = row(results, "client POST round trip (upper bound)", "rt", BREAKER_TARGET_MS)
    bare50, _ = row(results, "baseline: POST to a bare receiver", "bare")
    row(results, "baseline: BreakerStore.open in-process", "direct")
    print(f"  ratio p50 host / bare receiver: {rt50 / bare50:.2f}x; "
          f"added over the receiver: {rt50 - bare50:.3f} ms")
    print("event received -> traffic patch sent (applied at the fake API)")
    row(results, "received by the host -> PATCH applied", "traffic_inproc", TRAFFIC_TARGET_MS)
    tr50, _ = row(results, "client send -> PATCH applied", "traffic", TRAFFIC_TARGET_MS)
    st50, _ = row(results, "baseline: platform.set_traffic direct", "set_traffic")
    print(f"  ratio p50 function / direct set_traffic: {tr50 / st50:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--breaker-events", type=int, default=100, help="per round")
    ap.add_argument("--traffic-events", type=int, default=30, help="per round")
    args = ap.parse_args()

    with EmbeddedRedis() as rs, FakeKubeServer() as kube:
        bench = Bench(rs, kube)
        with FunctionsServer(bench.settings, bench.ctx, sweep=False) as server:
            bench.serve(server)
            bench.warm_up()
            started = time.monotonic()
            results = bench.run(args.rounds, args.breaker_events, args.traffic_events)
            elapsed = time.monotonic() - started
        bench.close()
    report(results, args.rounds, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

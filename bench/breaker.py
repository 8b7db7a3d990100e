"""Breakers: the check on the request path, and how fast an opened breaker stops traffic.

Targets (issue "Shared circuit breakers in Redis, and the inference gateway"):
  - breaker check on the request path <= 50 us p50 (no Redis round trip in steady state);
  - breaker opened -> all of 3 gateway processes stop routing there: p99 <= 50 ms.

1. Request path: ``BreakerRegistry.acquire`` (+ ``record``) timed call by call against a real
   Redis, beside the baseline it avoids: one Redis round trip (HMGET of the breaker's hash).
2. Propagation: 3 real ``surefoot gateway`` processes share one Redis and front two stub
   replicas A and B; 6 clients keep traffic flowing. Each trial opens A's breaker from this
   process (as an event-driven function would) at T0; A records each request with the time
   its gateway chose A (header x-surefoot-sent-at) and when it arrived. A gateway's delay is
   the last time it chose A at or after T0, minus T0 (0 if it never did). Then the breaker is
   reset and traffic to A resumes. The delay is measured from real traffic, so its resolution
   is the gap between a gateway's requests to A (printed). Also printed: the same figure by
   arrival time at A, which adds requests already in flight at T0 (and scheduling delays of
   this busy machine).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import Conn, free_port, request_bytes, start_gateway, stop

from knative.breakers import (
    BreakerRegistry,
    BreakerRegistrySettings,
    BreakerStore,
    EmbeddedRedis,
)
from tests.knative.stub_upstream import StubUpstream


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _time_request_path(reg: BreakerRegistry, keys: list[str], n: int) -> dict[str, list[int]]:
    perf = time.perf_counter_ns
    acq: list[int] = []
    both: list[int] = []
    three: list[int] = []
    rtt: list[int] = []
    for _ in range(2000):
        p = reg.acquire(keys[2])
        if p is not None:
            reg.record(p, True, 0.001)
    for _ in range(n):
        t0 = perf()
        p = reg.acquire(keys[2])
        t1 = perf()
        if p is not None:
            reg.record(p, True, 0.001)
        t2 = perf()
        acq.append(t1 - t0)
        both.append(t2 - t0)
    for _ in range(n):
        t0 = perf()
        ps = [reg.acquire(k) for k in keys]
        for p in ps:
            if p is not None:
                reg.record(p, True, 0.001)
        three.append(perf() - t0)
    hkey = reg.store.keys_of(keys[2])[0]
    client = reg.store.client
    for _ in range(min(n, 5000)):
        t0 = perf()
        client.hmget(hkey, ["state", "gen"])
        rtt.append(perf() - t0)
    return {"acquire": acq, "acquire + record": both, "3 keys: acquire + record each": three,
            "baseline: one Redis round trip": rtt}


def request_path(url: str, n: int) -> None:
    settings = BreakerRegistrySettings(redis_url=url)
    with BreakerRegistry(settings) as reg:
        reg.wait_ready()
        keys = ["revision:primary", "node:node-1", "replica:primary-0"]
        for k in keys:  # the keys exist in Redis and in the view, closed
            reg.reset(k)
        timed = _time_request_path(reg, keys, n)
        time.sleep(0.1)
        print("request path (closed breaker, Redis up), per call:")
        for name, xs in timed.items():
            print(f"  {name:32s} p50 {pct(xs, 0.5) / 1e3:8.2f} us"
                  f"   p99 {pct(xs, 0.99) / 1e3:8.2f} us")
        three, rtt = timed["3 keys: acquire + record each"], timed["baseline: one Redis round trip"]
        p50 = pct(three, 0.5) / 1e3
        print(f"  3-key check p50 {p50:.2f} us (target <= 50 us: "
              f"{'PASS' if p50 <= 50 else 'FAIL'});"
              f" {pct(rtt, 0.5) / pct(three, 0.5):.0f}x below one Redis round trip")


class _Trials:
    """The figures of the propagation trials."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.by_arrival: list[float] = []
        self.gaps: list[float] = []
        self.seen_all = 0

    def report(self, trials: int) -> None:
        print(f"\npropagation: breaker opened -> 3 gateway processes stop routing there "
              f"({trials} trials, {len(self.delays)} gateway-trials; "
              f"all 3 sending in {self.seen_all}):")
        ms = [d * 1e3 for d in self.delays]
        print(f"  delay p50 {pct(ms, 0.5):6.2f} ms   p99 {pct(ms, 0.99):6.2f} ms   "
              f"max {max(ms):6.2f} ms   mean {statistics.fmean(ms):6.2f} ms")
        am = [d * 1e3 for d in self.by_arrival]
        print(f"  by arrival at A (adds requests in flight): p50 {pct(am, 0.5):6.2f} ms   "
              f"p99 {pct(am, 0.99):6.2f} ms   max {max(am):6.2f} ms")
        if self.gaps:
            print(f"  resolution: a gateway's requests reach A every "
                  f"{statistics.median(self.gaps) * 1e3:.2f} ms (median gap)")
        p99 = pct(ms, 0.99)
        print(f"  p99 {p99:.2f} ms (target <= 50 ms: {'PASS' if p99 <= 50 else 'FAIL'})")


def _trial(a: StubUpstream, store: BreakerStore, key: str, settle: float, out: _Trials) -> None:
    # Traffic reaches A from every gateway before the trial starts.
    a.arrivals.clear()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len({g for _, g, _ in a.arrivals}) < 3:
        time.sleep(0.01)
    before = list(a.arrivals)
    senders = {g for _, g, _ in before}
    if len(senders) == 3:
        out.seen_all += 1
    for g in senders:
        ts = sorted(s for _, gg, s in before if gg == g)
        out.gaps += [y - x for x, y in itertools.pairwise(ts)]
    t0 = time.time()
    store.open(key, "bench: event opened it")
    time.sleep(settle)
    after = list(a.arrivals)
    for g in senders:
        chosen = [s for _, gg, s in after if gg == g and s >= t0]
        out.delays.append(max(chosen) - t0 if chosen else 0.0)
        arrived = [t for t, gg, _ in after if gg == g and t >= t0]
        out.by_arrival.append(max(arrived) - t0 if arrived else 0.0)
    store.reset(key, "bench: next trial")


def _client(port: int, stop_flag: threading.Event) -> None:
    c = Conn("127.0.0.1", port, request_bytes("127.0.0.1", port))
    while not stop_flag.is_set():
        try:
            c.call()
        except OSError:
            c.close()
            c = Conn("127.0.0.1", port, request_bytes("127.0.0.1", port))
        time.sleep(0.0005)
    c.close()


def propagation(url: str, trials: int, settle: float) -> None:
    a = StubUpstream(name="A").start()
    b = StubUpstream(name="B").start()
    a.record_arrivals = True
    gws = []
    stop_flag = threading.Event()
    threads: list[threading.Thread] = []
    try:
        env = {"SUREFOOT_REDIS_URL": url}
        ports = [free_port() for _ in range(3)]
        for port in ports:
            gws.append(start_gateway(port, [f"primary=100={a.url},{b.url}"], env=env))
        key = f"replica:127.0.0.1:{a.port}"
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=url))
        store.reset(key, "bench start")
        for port in ports:
            for _ in range(2):
                t = threading.Thread(target=_client, args=(port, stop_flag), daemon=True)
                t.start()
                threads.append(t)
        out = _Trials()
        for _ in range(trials):
            _trial(a, store, key, settle, out)
        out.report(trials)
        store.client.close()
    finally:
        stop_flag.set()
        for t in threads:
            t.join(5)
        for gw in gws:
            stop(gw)
        a.stop()
        b.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000, help="request-path calls to time")
    ap.add_argument("--trials", type=int, default=30, help="propagation trials")
    ap.add_argument("--settle", type=float, default=0.15,
                    help="seconds of traffic watched after each open")
    ap.add_argument("--redis-url", help="a Redis to use (default: an embedded one)")
    args = ap.parse_args()
    if args.redis_url:
        request_path(args.redis_url, args.calls)
        propagation(args.redis_url, args.trials, args.settle)
        return 0
    with EmbeddedRedis() as r:
        request_path(r.url, args.calls)
        propagation(r.url, args.trials, args.settle)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""State that survives: Redis and the gateway killed under ``surefoot up``.

Targets (issue "Safety state that survives"):
  - Redis SIGKILL -> Redis serving again (PING answered and the forced breaker read back):
    <= 2 s p99; breaker states identical to before the kill: 100%;
  - gateway master SIGKILL -> the OpenAI endpoint answering again (``GET /v1/models`` 200):
    <= 3 s p99.

The system is the one ``surefoot up`` wires (``LocalSystem``: real redis-server, real gateway
processes, real replicas; one primary and one fallback replica on two nodes, to leave CPU to the
measured processes). Before the kills, one breaker is forced open and one node breaker opened.
Each trial waits for the supervisor's backoff to reset (a crash loop is not what is measured).
Run from the repository root: ``python -m bench.survive [--trials N]``.
Baselines measured in the same run: a cold start of the same redis-server (to PING) and of the
same gateway command (to its first ``/v1/models`` 200), the times a restart cannot beat.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time

import httpx
import redis

from knative.breakers import BreakerRegistrySettings, BreakerStore, EmbeddedRedis
from surefoot._cmd_up import functions_factory
from surefoot._up import LocalSystem, UpSettings


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(pred: object, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.005)
    raise TimeoutError("did not recover")


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


FAILURES: dict[str, int] = {}  # why /v1/models did not answer 200, over the run


def _models_ok(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/v1/models", timeout=1)
    except httpx.HTTPError as exc:
        FAILURES[type(exc).__name__] = FAILURES.get(type(exc).__name__, 0) + 1
        return False
    if r.status_code != 200:
        why = f"HTTP {r.status_code} {r.text[:120]}"
        FAILURES[why] = FAILURES.get(why, 0) + 1
    return r.status_code == 200


def redis_baseline(trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as d:
            server = EmbeddedRedis(data_dir=d, persist=True)
            t0 = time.monotonic()
            server.start()
            out.append(time.monotonic() - t0)
            server.stop()
    return out


def _states(store: BreakerStore) -> dict[str, tuple[str, int]]:
    rows, _ = store.statuses()
    return {s.key: (s.state, s.generation) for s in rows}


def redis_trials(system: LocalSystem, store: BreakerStore, trials: int,
                 gap: float) -> tuple[list[float], int]:
    assert system.redis is not None
    same = 0
    times = []
    probe = redis.Redis.from_url(system.redis_url, socket_timeout=0.2,
                                 socket_connect_timeout=0.2)

    def serving() -> bool:
        try:
            return probe.hget("surefoot:breaker:{revision:surefoot-primary}",
                              "state") == b"forced_open"
        except redis.RedisError:
            return False

    for _ in range(trials):
        time.sleep(gap)
        pid = system.redis.pid
        assert pid is not None
        before = _states(store)  # just before: an open breaker moves on with time
        os.kill(pid, signal.SIGKILL)
        times.append(_until(serving))
        same += _states(store) == before
    return times, same


def gateway_trials(system: LocalSystem, trials: int, gap: float
                   ) -> tuple[list[float], list[float], int]:
    """Per trial: SIGKILL of the first gateway's master -> the endpoint's next 200 (the other
    gateway answers on the shared port), and -> the killed one restarted and answering; plus
    the requests that failed in all the trials (one fresh connection every 10 ms)."""
    answering, restarted, failed = [], [], 0
    for _ in range(trials):
        time.sleep(gap)
        gw = system.gateway
        assert gw is not None
        os.kill(gw.pid, signal.SIGKILL)
        t0 = time.monotonic()
        old = gw.pid
        while not _models_ok(system.gateway_url):
            failed += 1
            time.sleep(0.01)
        answering.append(time.monotonic() - t0)
        _until(lambda old=old: system.gateway is not None and system.gateway.pid != old)
        _until(lambda: _models_ok(system.gateway_url))
        restarted.append(time.monotonic() - t0)
    return answering, restarted, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--gateways", type=int, default=2,
                    help="gateway processes on the port (1: the restart alone is measured)")
    ap.add_argument("--gap", type=float, default=10.5,
                    help="seconds between kills (the supervisor's backoff resets after 10)")
    a = ap.parse_args(argv)
    state = tempfile.mkdtemp(prefix="bench-survive-")
    settings = UpSettings(port=_free_port(), nodes=2, primary_replicas=1, embeddings=False,
                          checkpoint_interval=0, grace_seconds=3, state_dir=state,
                          gpu_source=False, n_ctx=512, fallback_n_ctx=512, max_tokens=16,
                          gateways=a.gateways)
    system = LocalSystem(settings, os.environ, functions_factory)
    try:
        system.start()
        assert system.wait_ready(threading.Event()), "the system did not become ready"
        _until(lambda: _models_ok(system.gateway_url))
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=system.redis_url))
        store.force_open("revision:surefoot-primary", "bench")
        store.open("node:node-2", "bench")
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        base_r = redis_baseline(a.trials)
        rt, same = redis_trials(system, store, a.trials, a.gap)
        print(f"redis SIGKILL -> serving with its state: median {statistics.median(rt):.3f} s,"
              f" p99 {_p(rt, 0.99):.3f} s, max {max(rt):.3f} s over {len(rt)} "
              f"(target p99 <= 2 s); cold start baseline median "
              f"{statistics.median(base_r):.3f} s; ratio "
              f"{statistics.median(rt) / statistics.median(base_r):.1f}x")
        print(f"breaker states identical after the kill: {same}/{len(rt)} trials "
              f"({100 * same / len(rt):.0f}%)")
        # the gateway trials measure the gateway alone: with the primary forced open and the
        # fallback's node breaker open, no replica may answer at times, whatever the gateway
        for key in ("revision:surefoot-primary", "node:node-2"):
            store.reset(key, "bench: gateway trials")
        FAILURES.clear()
        _until(lambda: _models_ok(system.gateway_url))
        gt, back, failed = gateway_trials(system, a.trials, a.gap)
        cold = _gateway_cold_start(system)
        print(f"gateway SIGKILL ({system.s.gateways} gateways on the port) -> /v1/models 200: "
              f"median {statistics.median(gt):.3f} s, p99 {_p(gt, 0.99):.3f} s, max "
              f"{max(gt):.3f} s over {len(gt)} (target p99 <= 3 s); {failed} requests failed; "
              f"the killed one back in median {statistics.median(back):.3f} s; cold start "
              f"baseline {cold:.3f} s; ratio {statistics.median(gt) / cold:.3f}x; each: "
              + ", ".join(f"{x:.3f}" for x in gt))
        print(f"load average at end: {os.getloadavg()[0]:.1f}; /v1/models failures by cause: "
              f"{FAILURES}")
    finally:
        system.stop()
    return 0


def _gateway_cold_start(system: LocalSystem) -> float:
    """The same gateway command on another port, from spawn to its first /v1/models 200."""
    import subprocess

    assert system.control is not None
    port = _free_port()
    cmd = [sys.executable, "-m", "surefoot", "gateway", "--port", str(port), "--platform",
           "local", "--control-url", system.control.url, "--service", system.s.service,
           "--fallback-revision", system.s.fallback_revision, "--redis-url", system.redis_url,
           "--refresh-interval", "0.25"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        _until(lambda: _models_ok(f"http://127.0.0.1:{port}"))
        return time.monotonic() - t0
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(15)


if __name__ == "__main__":
    sys.exit(main())

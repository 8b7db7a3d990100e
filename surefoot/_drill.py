"""The fault drill: steady load through the gateway while a pod is deleted, a node is evicted
and a fatal GPU fault is injected. This module runs the phases; the load and its client live in
``_drill_load``, the timing of a GPU fault's reactions in ``_drill_watch``, the verdict, text
report and PNG timeline in ``_drill_report``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from surefoot._drill_load import PROMPT, LoadGenerator, Sample, StreamLoad, ms
from surefoot._drill_report import plot_timeline, summarise
from surefoot._drill_watch import (
    BREAKER_OPENED,
    GATEWAY_STOPPED,
    NODE_QUARANTINED,
    SIGNALS,
    ReactionWatch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrillSettings:
    rate: float = 5.0  # requests per second, open loop
    duration: float = 60.0  # seconds of steady load before the faults
    out: Path = Path("drill-out")
    max_tokens: int = 4
    settle: float = 3.0  # load kept after each recovery before the next fault
    recovery_timeout: float = 120.0
    faults: tuple[str, ...] = ("pod_delete", "node_evict", "gpu_fault")
    streams: int = 1  # closed-loop streaming clients beside the plain load
    burst_streams: int = 8  # concurrent streams of an abrupt phase
    hold: float = 8.0  # seconds each fault of an abrupt or the compound phase is held


@dataclass
class Target:
    """What the drill acts on: a platform, the gateway, and how to reach the rest."""

    platform: Any
    service: str
    gateway_url: str
    primary_revision: str
    broker_url: str = ""
    redis_url: str = ""
    admin_token: str = ""
    serve_args: tuple[str, ...] = ()
    start_nice: int = 0  # the priority the platform gives a starting replica
    control_url: str = ""  # the control API of `surefoot up` (its supervised Redis)
    fallback_revision: str = ""
    dead_letters: str = ""  # the broker's dead-letter file (``surefoot up``)


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` seconds; None if none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def lone_start(serve_args: tuple[str, ...], nice: int = 0) -> float | None:
    """Seconds from process start to ready of a lone replica, no checkpoint: the baseline
    (``nice``: started at the priority the platform gives a starting replica)."""
    if not serve_args:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port",
         str(port), *serve_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        ok = wait_until(ready, 120, 0.02)
        return time.time() - start if ok else None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def first_token(url: str | None) -> float | None:
    """When a streamed completion from the replica at ``url`` sent its first token."""
    if not url:
        return None
    try:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30, json={
                "prompt": PROMPT, "max_tokens": 2, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    return time.time()
    except httpx.HTTPError:
        return None
    return None


class Drill:
    def __init__(self, target: Target, settings: DrillSettings,
                 progress: Callable[[str], None] = print) -> None:
        self.t = target
        self.s = settings
        self.say = progress
        self.marks: list[tuple[float, str]] = []
        self.report: dict[str, Any] = {}
        self.t0 = time.time()
        self.load: LoadGenerator | None = None
        self.streams: StreamLoad | None = None
        self.windows: dict[str, tuple[float, float]] = {}  # phase -> (start, end) of load

    def _note(self, message: str) -> None:
        self.say(f"[{time.time() - self.t0:6.1f}s] {message}")

    def _mark(self, label: str) -> float:
        now = time.time()
        self.marks.append((now, label))
        self._note(label)
        return now

    # --- helpers -----------------------------------------------------------------------------
    def _primaries(self) -> list[Any]:
        return [r for r in self.t.platform.replicas(self.t.service)
                if r.revision == self.t.primary_revision]

    def _ready_primaries(self) -> list[Any]:
        """Ready primaries on schedulable nodes (a node cordoned before is not the drill's to
        fault or release)."""
        down = set(self._cordoned())
        return [r for r in self._primaries()
                if r.ready and r.phase == "Running" and r.node not in down]

    def _cordoned(self) -> list[str]:
        return sorted(n.name for n in self.t.platform.nodes() if n.unschedulable)

    def samples(self) -> list[Sample]:
        """Every request both loads recorded so far."""
        plain = list(self.load.samples) if self.load else []
        return plain + (list(self.streams.samples) if self.streams else [])

    # --- the drill ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        s = self.s
        self.report = {"platform": type(self.t.platform).__name__, "rate": s.rate,
                       "max_tokens": s.max_tokens, "started": self.t0, "phases": {}}
        if not wait_until(lambda: len(self._ready_primaries()) >= 1, 60):
            raise RuntimeError("no ready primary replica on a schedulable node: is the system "
                               "up, or are all its nodes cordoned?")
        self.report["cordoned_at_start"] = self._cordoned()
        if self.report["cordoned_at_start"]:
            self._note(f"nodes cordoned before the drill: "
                       f"{', '.join(self.report['cordoned_at_start'])} (left as they are)")
        baseline = lone_start(self.t.serve_args)
        self.report["baseline_start_s"] = baseline
        if baseline is not None:
            self._note(f"a lone replica starts and loads its model in {baseline:.2f} s")
        dead_before = self._dead_letters()
        self.load = LoadGenerator(self.t.gateway_url, s.rate, s.max_tokens).start()
        if s.streams:
            self.streams = StreamLoad(self.t.gateway_url, s.streams, 4 * s.max_tokens).start()
        try:
            self._steady(self.load)
            time.sleep(s.settle)
            for fault in s.faults:
                getattr(self, fault)()
                time.sleep(s.settle)
        finally:
            self.load.stop()
            if self.streams:
                self.streams.stop()
        self._count_dead_letters(dead_before)
        summarise(self.report, self.samples(), self.windows, self.marks, self.t0)
        return self.report

    def _dead_letters(self) -> list[dict[str, Any]] | None:
        """The events the broker has given up on so far (None: not known here)."""
        if not self.t.dead_letters:
            return None
        from surefoot._up_durable import DeadLetterLog

        rows: list[dict[str, Any]] = DeadLetterLog(Path(self.t.dead_letters)).describe(
            last=100_000)["last"]
        return rows

    def _count_dead_letters(self, before: list[dict[str, Any]] | None) -> None:
        time.sleep(min(self.s.settle, 5.0))  # the broker's last retries of the faults run out
        after = self._dead_letters()
        if before is None or after is None:
            return
        new = after[len(before):]
        self.report["dead_letters"] = {"count": len(new), "last": new[-5:]}
        if new:
            self._note(f"{len(new)} events dead-lettered by the broker: "
                       + "; ".join(f"{d['type']} to {d['dest']}: {d['reason']}" for d in new[:3]))

    def _steady(self, load: LoadGenerator) -> None:
        steady_start = self._mark("steady load")
        time.sleep(self.s.duration)
        self.windows["steady"] = (steady_start, time.time())
        done = load.window(steady_start, time.time())
        self._note(f"steady: {len(done)} answered, {sum(not x.ok for x in done)} failed")
        # the same lone start, now with this load on the machine: on one machine every
        # "node" shares the cores, so the recovery budget compares like with like
        loaded = lone_start(self.t.serve_args, nice=self.t.start_nice)
        self.report["baseline_start_under_load_s"] = loaded
        if loaded is not None:
            self._note(f"a lone replica starts in {loaded:.2f} s under the same load")

    def pod_delete(self) -> None:
        victim = self._ready_primaries()[0]
        before = {r.name for r in self._primaries()}
        t_del = self._mark(f"delete pod {victim.name} on {victim.node}")
        self.t.platform.delete_replica(victim.name)
        want = len(before)

        def recovered() -> Any:
            ready = [r for r in self._ready_primaries() if r.name != victim.name]
            return ready if len(ready) >= want else None

        ready = wait_until(recovered, self.s.recovery_timeout)
        t_ready = time.time()
        new = [r.name for r in (ready or []) if r.name not in before]
        self._mark(f"replacement {', '.join(new) or '?'} ready" if ready
                   else "replacement not ready in time")
        time.sleep(self.s.settle)
        self.windows["pod_delete"] = (t_del, time.time())
        self.report["phases"]["pod_delete"] = {
            "victim": victim.name, "node": victim.node, "replacement": new,
            "recovery_s": round(t_ready - t_del, 3) if ready else None,
            **self._first_served(set(new), t_del),
        }

    def _first_served(self, names: set[str], t_loss: float) -> dict[str, float | None]:
        """When the first request the replacement answered was answered (seconds from the
        loss), and its latency over the steady load's median."""
        served = sorted((x for x in self.samples() if x.ok and x.replica in names
                         and x.kind == "plain"), key=lambda x: x.end)
        if not served:
            return {"first_served_s": None, "first_latency_ratio": None}
        steady = self.windows.get("steady")
        base = sorted(x.latency for x in self.samples() if x.ok and x.kind == "plain"
                      and steady and steady[0] <= x.start < steady[1])
        median = base[len(base) // 2] if base else None
        return {"first_served_s": round(served[0].end - t_loss, 3),
                "first_latency_ratio": round(served[0].latency / median, 3) if median else None}

    def _snapshot_primaries(self) -> None:
        headers = {"Authorization": f"Bearer {self.t.admin_token}"} if self.t.admin_token else {}
        for r in self._ready_primaries():
            if r.url:
                try:
                    httpx.post(f"{r.url}/admin/snapshot", headers=headers, timeout=30)
                except httpx.HTTPError as exc:
                    self._note(f"snapshot of {r.name} failed: {exc}")

    def _evict_victim(self) -> Any:
        """A ready primary on a node whose only replica it is, when there is one: the measured
        recovery is then that replica's alone (on one machine, two replacements share the same
        cores)."""
        per_node: dict[str | None, int] = {}
        for r in self.t.platform.replicas(self.t.service):
            per_node[r.node] = per_node.get(r.node, 0) + 1
        ready = self._ready_primaries()
        if not ready:
            raise RuntimeError("no ready primary on a schedulable node to evict")
        return min(ready, key=lambda r: (per_node.get(r.node, 0), -ready.index(r)))

    def node_evict(self) -> None:
        self._snapshot_primaries()
        wait_until(lambda: len(self._ready_primaries()) >= len(self._primaries()), 60)
        node = self._evict_victim().node
        before = {r.name for r in self._primaries()}
        t_ev = self._mark(f"evict node {node}")
        self.t.platform.cordon(node)
        report = self.t.platform.evict(node, 60.0)

        def replacement() -> Any:
            for r in self._primaries():
                if r.name not in before and r.ready:
                    return r
            return None

        new = wait_until(replacement, self.s.recovery_timeout, 0.01)
        t_ready = time.time()
        phases: dict[str, float | None] = {}
        token_at = None
        if new is not None:
            self._mark(f"replacement {new.name} ready on {new.node}")
            token_at = first_token(new.url)
            phases = self._phases(new, t_ev)
        self.t.platform.uncordon(node)
        self.windows["node_evict"] = (t_ev, time.time())
        self.report["phases"]["node_evict"] = {
            "node": node, "evicted": list(report.evicted), "replacement": new.name if new else None,
            "replacement_node": new.node if new else None,
            "recovery_s": round(t_ready - t_ev, 3) if new else None,
            "phases_s": {**phases,
                         "first_token": round(token_at - t_ev, 3) if token_at else None},
            **self._evict_budgets(),
        }

    def _evict_budgets(self) -> dict[str, float | None]:
        idle = self.report.get("baseline_start_s")
        baseline = self.report.get("baseline_start_under_load_s") or idle
        return {"budget_s": round(baseline + 1.0, 3) if baseline else None,
                "budget_idle_s": round(idle + 1.0, 3) if idle else None}

    def _phases(self, replica: Any, t_ev: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        status = getattr(self.t.platform, "status", None)
        if callable(status):
            for r in status().get("replicas", []):
                if r["name"] == replica.name:
                    for key, label in (("scheduled", "scheduled"), ("started", "process_started"),
                                       ("ready_at", "ready")):
                        out[label] = round(r[key] - t_ev, 3) if r.get(key) else None
        try:
            st = httpx.get(f"{replica.url}/admin/status", timeout=5).json()
            for key in ("checkpoint_restored", "model_loaded", "state_restored"):
                v = st.get("phases", {}).get(key)
                out[key] = round(v - t_ev, 3) if v else None
        except (httpx.HTTPError, ValueError):
            pass
        return out

    def gpu_fault(self) -> None:
        if not (self.t.broker_url and self.t.redis_url):
            self.report["phases"]["gpu_fault"] = {"skipped": "no broker or redis to inject into"}
            return
        from events import DETECTOR_INJECT, GpuSourceSettings, Sender, SenderSettings, xid_event
        from knative.breakers import BreakerRegistrySettings, BreakerStore, node_key

        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=self.t.redis_url))
        # a node whose breaker is closed: one the earlier phases' failed tries left open would
        # not open again, and its opening is what is timed
        ready = self._ready_primaries()
        before = {r.name: store.status(node_key(r.node)).state for r in ready}
        victim = next((r for r in ready if before[r.name] == "closed"), ready[0])
        node = victim.node
        key = node_key(node)
        watch = ReactionWatch(self.t, node, key, store.channel)
        event = xid_event(GpuSourceSettings(node=node), None, 79,
                          message="GPU has fallen off the bus.", detector=DETECTOR_INJECT)
        sender = Sender(SenderSettings())  # long-lived, as the GPU source's own sender is
        watch.start()
        t_inj = self._mark(f"inject XID 79 on {node}")
        sender.send(event, self.t.broker_url)
        try:
            # a reroute, if one follows, comes soon after the others
            watch.wait({BREAKER_OPENED, GATEWAY_STOPPED, NODE_QUARANTINED}, 20, linger=1.0)
        finally:
            watch.close()
        self._record_gpu_fault(watch.seen, node, victim.name, t_inj)
        self.report["phases"]["gpu_fault"]["breaker_before"] = before[victim.name]
        self._release(node, store, key)
        self.windows["gpu_fault"] = (t_inj, time.time())

    def _record_gpu_fault(self, seen: dict[str, float], node: str, victim: str,
                          t_inj: float) -> None:
        for name, at in sorted(seen.items(), key=lambda kv: kv[1]):
            self.marks.append((at, name.replace("_", " ")))
            self._note(f"{name.replace('_', ' ')} after {(at - t_inj) * 1000:.1f} ms")
        assert self.load is not None
        on_node = {r.name for r in self.t.platform.replicas(self.t.service) if r.node == node}
        on_node.add(victim)
        served = [x for x in self.load.window(t_inj, time.time()) if x.replica in on_node]
        last = max((x.start for x in served), default=None)
        self.report["phases"]["gpu_fault"] = {
            "node": node, "xid": 79,
            **{f"{k}_ms": ms(seen[k] - t_inj) if k in seen else None for k in SIGNALS},
            "last_request_routed_to_node_ms": ms(last - t_inj) if last else None,
        }

    def _release(self, node: str, store: Any, key: str) -> None:
        try:
            self.t.platform.uncordon(node)
            self.t.platform.label(node, "surefoot.dev/gpu-error", None)
            store.reset(key, "drill: released")
        except Exception as exc:  # the report stands; say what was left behind
            self._note(f"could not release {node}: {exc}")

    def replica_kill(self) -> None:
        self._abrupt("replica_kill", signal.SIGKILL)

    def replica_freeze(self) -> None:
        self._abrupt("replica_freeze", signal.SIGSTOP)

    def _abrupt(self, phase: str, sig: signal.Signals) -> None:
        from surefoot._drill_abrupt import AbruptPhase

        report, window = AbruptPhase(self.t, self._mark, self._note, self.s.burst_streams,
                                     4 * self.s.max_tokens, self.s.hold).run(sig)
        self.report["phases"][phase] = report
        if window[1]:
            self.windows[phase] = window

    def compound(self) -> None:
        from surefoot._drill_compound import CompoundPhase

        report, window = CompoundPhase(self.t, self._mark, self._note,
                                       self.s.hold).run(self.samples)
        self.report["phases"]["compound"] = report
        self.windows["compound"] = window

    def redis_kill(self) -> None:
        from surefoot._drill_redis import RedisPhase

        assert self.load is not None
        report, window = RedisPhase(self.t, self.load, self._mark, self._note).run()
        self.report["phases"]["redis_kill"] = report
        if window[1]:
            self.windows["redis_kill"] = window

    # --- report ------------------------------------------------------------------------------
    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        report_path = out / "report.json"
        report_path.write_text(json.dumps(self.report, indent=2, default=str))
        png = out / "timeline.png"
        assert self.load is not None
        plot_timeline(self.load.samples, self.marks, self.t0, png)
        return report_path, png

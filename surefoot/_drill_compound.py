"""The drill's compound phase: faults that pile up, none repaired before the next.

A fatal GPU fault on the node of the fallback's replica, the eviction of a primary's node, a
fatal GPU fault on another primary's node, then a replica killed with SIGKILL: each held while
the plain and the streaming load go on. A watch samples every revision's ready replicas all the
while, so the verdict can tell a request that failed while some replica was ready (a defect)
from one that failed when nothing could serve it. The report gives, after each step, the
capacity left and the nodes cordoned; at the end the drill releases what it did itself and
leaves alone what was cordoned before it came.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from surefoot._drill_abrupt import replica_pids
from surefoot._drill_load import Sample

QUARANTINE_LABEL = "surefoot.dev/gpu-error"
STEPS = ("gpu_fault_fallback_node", "evict_primary_node", "gpu_fault_primary_node",
         "kill_replica")


def send_xid(broker_url: str, node: str) -> None:
    """An XID 79 (the GPU fell off the bus) from ``node``, sent to the broker as the GPU
    source would."""
    from events import DETECTOR_INJECT, GpuSourceSettings, Sender, SenderSettings, xid_event

    event = xid_event(GpuSourceSettings(node=node), None, 79,
                      message="GPU has fallen off the bus.", detector=DETECTOR_INJECT)
    Sender(SenderSettings()).send(event, broker_url)


class CapacityWatch:
    """Ready replicas per revision, sampled every ``step`` seconds on a thread of its own."""

    def __init__(self, platform: Any, service: str, step: float = 0.1) -> None:
        self.platform = platform
        self.service = service
        self.step = step
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capacity", daemon=True)

    def start(self) -> CapacityWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready: dict[str, int] = {}
                for r in self.platform.replicas(self.service):
                    ready.setdefault(r.revision, 0)
                    ready[r.revision] += int(bool(r.ready) and r.phase == "Running")
                self.samples.append((time.time(), ready))
            except Exception:  # a sample missed; the next one counts
                pass
            self._stop.wait(self.step)

    def any_ready(self, t0: float, t1: float) -> bool:
        """Was some replica of some revision ready at a sample within [t0, t1] (or the last
        sample before t0, when none falls inside)?"""
        inside = [r for t, r in self.samples if t0 <= t <= t1]
        if not inside:
            inside = [r for t, r in self.samples if t < t0][-1:]
        return any(sum(r.values()) > 0 for r in inside)


def capacity(platform: Any, service: str) -> dict[str, str]:
    """Each revision's ready replicas over its replicas, as "ready/all"."""
    out: dict[str, list[int]] = {}
    for r in platform.replicas(service):
        c = out.setdefault(r.revision, [0, 0])
        c[0] += int(bool(r.ready) and r.phase == "Running")
        c[1] += 1
    return {rev: f"{a}/{b}" for rev, (a, b) in sorted(out.items())}


def cordoned(platform: Any) -> list[str]:
    return sorted(n.name for n in platform.nodes() if n.unschedulable)


class CompoundPhase:
    """One run of the phase; ``run(samples)`` returns its report and load window.
    ``samples()`` gives every request the drill's loads recorded so far."""

    def __init__(self, target: Any, mark: Callable[[str], float],
                 note: Callable[[str], None], hold: float = 8.0) -> None:
        self.t = target
        self.mark = mark
        self.note = note
        self.hold = hold
        self.cordoned_before: list[str] = []
        self._cordoned: set[str] = set()
        self._labelled: set[str] = set()

    def run(self, samples: Callable[[], list[Sample]]
            ) -> tuple[dict[str, Any], tuple[float, float]]:
        self.cordoned_before = cordoned(self.t.platform)
        watch = CapacityWatch(self.t.platform, self.t.service).start()
        start = time.time()
        steps: list[dict[str, Any]] = []
        try:
            for name in STEPS:
                t_step = time.time()
                what = getattr(self, f"_{name}")()
                self.mark(f"compound: {what}")
                time.sleep(self.hold)
                window = [x for x in samples() if t_step <= x.start < time.time()]
                steps.append({"step": name, "did": what, **self._verdict(window, watch),
                              "capacity": capacity(self.t.platform, self.t.service),
                              "cordoned": cordoned(self.t.platform)})
                self.note(f"after {name}: capacity {steps[-1]['capacity']}, cordoned "
                          f"{steps[-1]['cordoned']}, {steps[-1]['failed']} failed")
        finally:
            end = time.time()
            watch.stop()
            self._release()
        window = [x for x in samples() if start <= x.start < end]
        return {"cordoned_before": self.cordoned_before, "steps": steps,
                **self._verdict(window, watch)}, (start, end)

    def _verdict(self, window: list[Sample], watch: CapacityWatch) -> dict[str, int]:
        failed = [x for x in window if not x.ok]
        return {"requests": len(window), "failed": len(failed),
                "failed_while_ready": sum(watch.any_ready(x.start, x.end) for x in failed)}

    # --- the steps ---------------------------------------------------------------------------
    def _ready(self, revision: str | None = None) -> list[Any]:
        down = set(cordoned(self.t.platform))
        return [r for r in self.t.platform.replicas(self.t.service)
                if r.ready and r.phase == "Running" and r.node not in down
                and (revision is None or r.revision == revision)]

    def _xid(self, node: str) -> None:
        send_xid(self.t.broker_url, node)
        self._labelled.add(node)
        self._cordoned.add(node)  # quarantine cordons it (or refuses: released either way)

    def _gpu_fault_fallback_node(self) -> str:
        fallback = self._ready(self.t.fallback_revision) if self.t.fallback_revision else []
        if not fallback or not self.t.broker_url:
            return "no ready fallback replica (or no broker): step skipped"
        node = fallback[0].node
        self._xid(node)
        return f"XID 79 on {node} (fallback {fallback[0].name})"

    def _evict_primary_node(self) -> str:
        primaries = self._ready(self.t.primary_revision)
        if not primaries:
            return "no ready primary on a schedulable node: step skipped"
        node = primaries[-1].node
        self._cordoned.add(node)
        self.t.platform.cordon(node)
        report = self.t.platform.evict(node, 30.0)
        return f"evicted {node} ({', '.join(report.evicted) or 'nothing'})"

    def _gpu_fault_primary_node(self) -> str:
        primaries = self._ready(self.t.primary_revision)
        if not primaries or not self.t.broker_url:
            return "no other ready primary (or no broker): step skipped"
        self._xid(primaries[0].node)
        return f"XID 79 on {primaries[0].node} (primary {primaries[0].name})"

    def _kill_replica(self) -> str:
        pids = replica_pids(self.t.platform)
        ready = [r for r in self._ready() if r.name in pids]
        if not ready:
            return "no ready replica process to kill: step skipped"
        victim = ready[0]
        try:
            os.killpg(pids[victim.name], signal.SIGKILL)
        except ProcessLookupError:
            return f"{victim.name} was already gone"
        return f"SIGKILL {victim.name} on {victim.node}"

    def _release(self) -> None:
        """Undo what the phase did: nodes it cordoned or had quarantined (not those cordoned
        before it came), their GPU labels and node breakers."""
        from knative.breakers import BreakerRegistrySettings, BreakerStore, node_key

        store = (BreakerStore.from_url(BreakerRegistrySettings(redis_url=self.t.redis_url))
                 if self.t.redis_url else None)
        for node in sorted(self._cordoned - set(self.cordoned_before)):
            try:
                self.t.platform.uncordon(node)
                if node in self._labelled:
                    self.t.platform.label(node, QUARANTINE_LABEL, None)
                    if store is not None:
                        store.reset(node_key(node), "drill: released")
            except Exception as exc:  # the report stands; say what was left behind
                self.note(f"could not release {node}: {exc}")

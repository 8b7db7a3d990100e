"""The drill's Redis phase: the breakers' store killed while an operator's hand is on them.

A node is quarantined (labelled, cordoned, its breaker forced open) and the fallback revision
forced open; then the Redis of ``surefoot up`` is killed with SIGKILL. Under steady load the
phase checks that no request reached the node's replicas or the forced-open revision at any
time (the gateways fail static, then re-read the restored states), how long Redis took to serve
again with both states as they were, and that no request failed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx

from surefoot._drill_load import LoadGenerator, ms

QUARANTINE_LABEL = "surefoot.dev/gpu-error"


def redis_pid(control_url: str) -> int | None:
    """The pid of the Redis that ``surefoot up`` supervises (``None``: not one of its own)."""
    try:
        doc = httpx.get(f"{control_url}/components", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    pid = next((c.get("pid") for c in doc.get("components", []) if c.get("name") == "redis"),
               None)
    return int(pid) if pid else None


class RedisPhase:
    """One run of the phase; ``run()`` returns the phase's report and its load window."""

    def __init__(self, target: Any, load: LoadGenerator, mark: Callable[[str], float],
                 note: Callable[[str], None], timeout: float = 30.0) -> None:
        self.t = target
        self.load = load
        self.mark = mark
        self.note = note
        self.timeout = timeout

    def run(self) -> tuple[dict[str, Any], tuple[float, float]]:
        from knative.breakers import BreakerRegistrySettings, BreakerStore, node_key, revision_key

        t = self.t
        pid = redis_pid(t.control_url) if t.control_url else None
        if pid is None or not t.fallback_revision:
            return {"skipped": "no supervised Redis of `surefoot up` to kill"}, (0.0, 0.0)
        victim = next(r for r in t.platform.replicas(t.service)
                      if r.revision == t.primary_revision and r.ready)
        node = victim.node
        keys = {node_key(node): "forced_open", revision_key(t.fallback_revision): "forced_open"}
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=t.redis_url,
                                                              redis_timeout=1.0))
        t.platform.label(node, QUARANTINE_LABEL, "true")
        t.platform.cordon(node)
        for key in keys:
            store.force_open(key, "drill: redis phase")
        start = self.mark(f"quarantine {node}, force {t.fallback_revision} open")
        time.sleep(1.0)  # the gateways learn both; the durable copy is written
        t_kill = self.mark(f"SIGKILL redis (pid {pid})")
        os.kill(pid, signal.SIGKILL)
        back = self._wait_states(store, keys)
        if back is not None:
            self.mark("redis serving again with both states")
        time.sleep(2.0)
        end = time.time()
        on_node = {r.name for r in t.platform.replicas(t.service) if r.node == node}
        on_node.add(victim.name)
        window = self.load.window(start, end)
        to_node = [x for x in window if x.replica in on_node and x.start > start + 0.5]
        to_forced = [x for x in window if x.replica.startswith(f"{t.fallback_revision}-")
                     and x.start > start + 0.5]
        self._release(store, node, keys)
        return {
            "node": node, "forced_open": t.fallback_revision,
            "redis_back_with_states_ms": ms(back - t_kill) if back is not None else None,
            "requests": len(window), "failed": sum(not x.ok for x in window),
            "routed_to_quarantined_node": len(to_node),
            "routed_to_forced_open_revision": len(to_forced),
        }, (start, end)

    def _wait_states(self, store: Any, keys: dict[str, str]) -> float | None:
        from knative.breakers import BreakerError

        deadline = time.monotonic() + self.timeout
        time.sleep(0.01)  # the kill lands first
        while time.monotonic() < deadline:
            try:
                if all(store.status(k).state == v for k, v in keys.items()):
                    return time.time()
            except BreakerError:
                pass
            time.sleep(0.01)
        return None

    def _release(self, store: Any, node: str, keys: dict[str, str]) -> None:
        try:
            for key in keys:
                store.reset(key, "drill: released")
            self.t.platform.uncordon(node)
            self.t.platform.label(node, QUARANTINE_LABEL, None)
        except Exception as exc:  # the report stands; say what was left behind
            self.note(f"could not release {node}: {exc}")

"""The drill's abrupt phases: a replica killed with SIGKILL, or frozen with SIGSTOP, while
streams run on it.

Real faults do not drain: a GPU that falls off the bus, an OOM kill or a hung node leave the
process dead or frozen with its sockets open. Each phase starts a burst of concurrent streams,
picks the ready replica with the most of them in flight, signals its process group and holds
the load. The report counts the streams broken (cut, or ended by an error event), the resumes
the gateway made by cause (from its metrics), and the longest pause a client saw.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx

from surefoot._drill_load import Sample, StreamLoad, ms

_EVENT = re.compile(r'^surefoot_gateway_events_total\{event="([a-z_]+)"\} ([0-9.e+]+)$', re.M)


def gateway_urls(target: Any) -> list[str]:
    """Where each gateway's own metrics are read: under ``surefoot up`` every gateway process
    has a port of its own beside the shared one (its components say which); else the one
    gateway URL."""
    if target.control_url:
        try:
            doc = httpx.get(f"{target.control_url}/components", timeout=2).json()
            own = [c["url"] for c in doc.get("components", [])
                   if str(c.get("name", "")).startswith("gateway") and c.get("url")]
            if own:
                return own
        except (httpx.HTTPError, ValueError):
            pass
    return [target.gateway_url]


def gateway_events(urls: list[str]) -> dict[str, float]:
    """The gateways' event counters from their metrics, summed (a gateway that cannot be read
    counts nothing)."""
    out: dict[str, float] = {}
    for url in urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for name, v in _EVENT.findall(text):
            out[name] = out.get(name, 0.0) + float(v)
    return out


def replica_pids(platform: Any) -> dict[str, int]:
    """The pid of each replica's process (its process group's leader) where the platform
    says (the local platform does; a cluster's pods are not signalled from here)."""
    status = getattr(platform, "status", None)
    if not callable(status):
        return {}
    return {r["name"]: int(r["pid"]) for r in status().get("replicas", []) if r.get("pid")}


class AbruptPhase:
    """One abrupt fault; ``run(sig)`` returns the phase's report and its load window."""

    def __init__(self, target: Any, mark: Callable[[str], float],
                 note: Callable[[str], None], streams: int = 8, max_tokens: int = 32,
                 hold: float = 6.0) -> None:
        self.t = target
        self.mark = mark
        self.note = note
        self.streams = streams
        self.max_tokens = max_tokens
        self.hold = hold  # how long a frozen replica stays frozen; the load after a kill

    def run(self, sig: signal.Signals) -> tuple[dict[str, Any], tuple[float, float]]:
        pids = replica_pids(self.t.platform)
        if not pids:
            return {"skipped": "the platform gives no replica processes to signal"}, (0.0, 0.0)
        load = StreamLoad(self.t.gateway_url, self.streams, self.max_tokens).start()
        urls = gateway_urls(self.t)
        before = gateway_events(urls)
        start = time.time()
        victim = self._victim(load, set(pids))
        try:
            if victim is None:
                return {"skipped": "no stream reached a replica"}, (0.0, 0.0)
            pid = pids[victim]
            on_victim = load.in_flight().get(victim, 0)
            self.mark(f"{sig.name} {victim} (pid {pid}, {on_victim} streams on it)")
            os.killpg(pid, sig)
            time.sleep(self.hold)
            if sig == signal.SIGSTOP:
                self.mark(f"SIGCONT {victim}")
                os.killpg(pid, signal.SIGCONT)
            time.sleep(2.0)  # the streams that were resumed finish
        except ProcessLookupError:
            self.note(f"{victim} was gone before it was signalled")
        finally:
            load.stop()
        end = time.time()
        return self._report(victim, on_victim, load.window(start, end), before,
                            gateway_events(urls)), (start, end)

    def _victim(self, load: StreamLoad, known: set[str], timeout: float = 20.0) -> str | None:
        """The known replica with the most streams in flight, once the streams have started
        (and a few tokens have gone out on them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_ = {r: n for r, n in load.in_flight().items() if r in known}
            if open_:
                time.sleep(0.3)  # mid-stream, not at the first token
                open_ = {r: n for r, n in load.in_flight().items() if r in known} or open_
                return max(open_, key=lambda r: open_[r])
            time.sleep(0.05)
        return None

    def _report(self, victim: str | None, on_victim: int, window: list[Sample],
                before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:

        def delta(event: str) -> int:
            return max(0, int(after.get(event, 0) - before.get(event, 0)))  # 0: restarted

        gaps = [x.max_gap for x in window if x.replica == victim]
        return {
            "victim": victim, "streams_on_victim": on_victim, "streams": len(window),
            "broken": sum(not x.ok for x in window),
            "resumed_broken": delta("resume_broken"), "resumed_stalled": delta("resume_stalled"),
            # tries that got no first event in time (a stream sent to the victim after it froze)
            "resumed_first_event": delta("resume_first_event"),
            "max_pause_on_victim_ms": ms(max(gaps)) if gaps else None,
            "max_pause_ms": ms(max((x.max_gap for x in window), default=0.0)),
            "errors": sorted({x.error for x in window if x.error})[:4],
        }

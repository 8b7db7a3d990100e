"""GPU observations in, deduplicated and rate-limited ``gpu.*`` events out.

Two detection paths (NVML through a GpuProbe, and NVRM lines from the kernel log) feed one
GpuEventStream: the same XID seen by both paths (or repeated within ``dedupe_window_s``) counts
once; a key that already produced an event is rate-limited; the same XID on the same GPU
``escalate_after`` times within ``escalate_window_s`` escalates (an app-level XID becomes a GPU
reset); ECC, thermal and lost states are edge-triggered, and ``gpu.healthy`` follows when every
problem of a GPU has been quiet for ``clear_after_s``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from events._catalog import DETECTOR_KERNEL_LOG, DETECTOR_NVML, Event
from events._gpu_events import (
    GpuSourceSettings,
    ecc_event,
    healthy_event,
    lost_event,
    thermal_event,
    xid_event,
)
from events._kmsg import KernelXid, parse_xid_line
from events._probe import THERMAL_REASONS, GpuInfo, GpuReading, decode_clock_reasons, pci_key

Emit = Callable[[Event], None]


@dataclass
class _XidTrack:
    occurrences: deque[float] = field(default_factory=deque)
    last_emitted: float | None = None
    last_severity_rank: int = -1
    escalated_at: float | None = None
    suppressed: int = 0


@dataclass
class _GpuTrack:
    problems: dict[str, float] = field(default_factory=dict)  # problem -> last seen
    last_unc: int | None = None
    ecc_flags: tuple[bool, bool, bool] = (False, False, False)
    ecc_uncontained: bool | None = None
    thermal: frozenset[str] = frozenset()
    lost: bool = False
    last_emit: dict[str, float] = field(default_factory=dict)


_RANK = {"info": 0, "warning": 1, "critical": 2, "fatal": 3}


class GpuEventStream:
    """Dedupe, rate-limit and escalate GPU observations into events. Thread-safe.

    ``clock`` is monotonic seconds (injectable). Returns the events it emitted.
    """

    def __init__(self, settings: GpuSourceSettings, emit: Emit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._emit = emit
        self._clock = clock
        self._lock = threading.RLock()
        self._gpus: dict[str, GpuInfo] = {}  # pci key -> info
        self._by_index: dict[int, GpuInfo] = {}
        self._xids: dict[tuple[str, int], _XidTrack] = {}
        self._tracks: dict[str, _GpuTrack] = {}
        self.emitted = 0
        self.suppressed = 0

    def set_gpus(self, gpus: Iterable[GpuInfo]) -> None:
        with self._lock:
            for g in gpus:
                self._by_index[g.index] = g
                key = pci_key(g.pci_bus_id)
                if key:
                    self._gpus[key] = g

    def gpu_by_index(self, index: int) -> GpuInfo | None:
        return self._by_index.get(index)

    def _key(self, gpu: GpuInfo | None, pci: str | None) -> str:
        if gpu is not None:
            return pci_key(gpu.pci_bus_id) or f"index:{gpu.index}"
        return pci_key(pci) or f"pci:{pci}"

    def _track(self, key: str) -> _GpuTrack:
        return self._tracks.setdefault(key, _GpuTrack())

    def _out(self, event: Event) -> Event:
        self.emitted += 1
        self._emit(event)
        return event

    def _suppress(self, track: _XidTrack) -> None:
        track.suppressed += 1
        self.suppressed += 1

    # XIDs ------------------------------------------------------------------------------
    def xid(self, xid: int, *, gpu: GpuInfo | None = None, pci: str | None = None,
            message: str = "", pid: int | None = None, detector: str = DETECTOR_NVML
            ) -> Event | None:
        s = self.settings
        with self._lock:
            if gpu is None and pci is not None:
                gpu = self._gpus.get(pci_key(pci) or "")
            key = self._key(gpu, pci)
            now = self._clock()
            track = self._xids.setdefault((key, xid), _XidTrack())
            if not self._occurred(track, now):
                return None  # the same occurrence, seen again (other path, or a burst)
            gtrack = self._track(key)
            event = xid_event(s, gpu, xid, message=message, pid=pid, detector=detector,
                              repeats=len(track.occurrences),
                              ecc_uncontained=gtrack.ecc_uncontained, pci_bus_id=pci)
            data = event.data
            if data["action"] == "ignore" and not s.emit_ignored:
                return None
            if data["action"] != "ignore":
                gtrack.problems[f"xid:{xid}"] = now
            if not self._admit(track, data, now):
                return None
            return self._out(event)

    def _occurred(self, track: _XidTrack, now: float) -> bool:
        """Count an occurrence in the escalation window; False when it repeats the last one
        within the dedupe window."""
        s = self.settings
        occ = track.occurrences
        if occ and now - occ[-1] < s.dedupe_window_s:
            self._suppress(track)
            return False
        occ.append(now)
        while occ and now - occ[0] > s.escalate_window_s:
            occ.popleft()
        return True

    def _admit(self, track: _XidTrack, data: dict[str, Any], now: float) -> bool:
        """Rate limit: within ``rate_limit_s`` only a newly escalated or more severe event."""
        s = self.settings
        rank = _RANK[data["severity"]]
        newly_escalated = data["escalated"] and (
            track.escalated_at is None or now - track.escalated_at > s.escalate_window_s
        )
        limited = track.last_emitted is not None and now - track.last_emitted < s.rate_limit_s
        if limited and not newly_escalated and rank <= track.last_severity_rank:
            self._suppress(track)
            return False
        if newly_escalated:
            track.escalated_at = now
        track.last_emitted = now
        track.last_severity_rank = rank
        return True

    def kernel_line(self, line: str) -> Event | None:
        parsed: KernelXid | None = parse_xid_line(line)
        if parsed is None:
            return None
        return self.xid(parsed.xid, pci=parsed.pci, message=parsed.message, pid=parsed.pid,
                        detector=DETECTOR_KERNEL_LOG)

    # readings --------------------------------------------------------------------------
    def reading(self, reading: GpuReading) -> list[Event]:
        out: list[Event] = []
        with self._lock:
            gpu = self._by_index.get(reading.index)
            key = self._key(gpu, None) if gpu else f"index:{reading.index}"
            t = self._track(key)
            now = self._clock()
            if t.lost:
                t.lost = False  # it answers again
                t.problems["lost"] = now
            out.extend(self._ecc(gpu, t, reading, now))
            out.extend(self._thermal(gpu, t, reading, now))
            out.extend(self._maybe_healthy(gpu, t, now))
        return out

    def _ecc(self, gpu: GpuInfo | None, t: _GpuTrack, reading: GpuReading,
             now: float) -> list[Event]:
        """New uncorrected errors, or a pending/failed remap or retirement."""
        unc = reading.ecc_volatile_uncorrected
        new_unc = unc is not None and unc > (t.last_unc if t.last_unc is not None else 0)
        if unc is not None:
            t.last_unc = unc
        flags = (bool(reading.remapped_rows_pending), bool(reading.remapped_rows_failure),
                 bool(reading.retired_pages_pending))
        raised = any(f and not old for f, old in zip(flags, t.ecc_flags, strict=True))
        t.ecc_flags = flags
        if reading.remapped_rows_failure is not None or reading.remapped_rows_pending is not None:
            # A failed or pending remap means the error was not contained in place.
            t.ecc_uncontained = bool(reading.remapped_rows_failure) or bool(
                reading.remapped_rows_pending)
        if new_unc or raised:
            t.problems["ecc"] = now
            return [self._out(ecc_event(self.settings, gpu, reading, new_uncorrected=new_unc))]
        if any(flags):
            t.problems["ecc"] = now  # still pending: keep the problem open
        return []

    def _thermal(self, gpu: GpuInfo | None, t: _GpuTrack, reading: GpuReading,
                 now: float) -> list[Event]:
        """Slowdown reasons, or temperature over the limit (5 degree hysteresis)."""
        s = self.settings
        out: list[Event] = []
        decoded = set(decode_clock_reasons(reading.clock_reasons))
        reasons = decoded & THERMAL_REASONS
        temp = reading.temperature_c
        limit = s.temperature_limit_c
        if temp is not None and (temp >= limit or ("temperature" in t.thermal
                                                   and temp > limit - 5)):
            reasons.add("temperature")
        current = frozenset(reasons)
        if current:
            t.problems["thermal"] = now
            gained = current - t.thermal
            last = t.last_emit.get("thermal")
            if gained and (not t.thermal or last is None or now - last >= s.rate_limit_s):
                all_reasons = sorted(current | (decoded & {"sw_power_cap"}))
                out.append(self._out(thermal_event(s, gpu, all_reasons, temp)))
                t.last_emit["thermal"] = now
        t.thermal = current
        return out

    def lost(self, index: int | None, reason: str, *, detector: str = DETECTOR_NVML
             ) -> Event | None:
        with self._lock:
            gpu = self._by_index.get(index) if index is not None else None
            key = self._key(gpu, None) if gpu else f"index:{index}"
            t = self._track(key)
            now = self._clock()
            t.problems["lost"] = now
            if t.lost:
                return None
            t.lost = True
            return self._out(lost_event(self.settings, gpu, reason, detector=detector))

    def tick(self) -> list[Event]:
        """Emit gpu.healthy for GPUs whose problems all went quiet (call once per poll)."""
        with self._lock:
            now = self._clock()
            out: list[Event] = []
            for key, t in self._tracks.items():
                gpu = self._gpus.get(key)
                if gpu is None and key.startswith("index:"):
                    gpu = self._by_index.get(int(key.split(":", 1)[1]))
                out.extend(self._maybe_healthy(gpu, t, now))
            return out

    def _maybe_healthy(self, gpu: GpuInfo | None, t: _GpuTrack, now: float) -> list[Event]:
        if not t.problems or t.lost:
            return []
        if t.thermal or any(t.ecc_flags):
            return []
        if any(now - seen < self.settings.clear_after_s for seen in t.problems.values()):
            return []
        cleared = list(t.problems)
        t.problems.clear()
        return [self._out(healthy_event(self.settings, gpu, cleared))]

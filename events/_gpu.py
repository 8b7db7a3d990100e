"""The GPU health source: probe readings and kernel-log XIDs in, catalog events out.

Two detection paths (NVML through a GpuProbe, and NVRM lines from the kernel log) feed one
GpuEventStream, which turns observations into ``gpu.*`` events: the same XID seen by both paths
(or repeated within ``dedupe_window_s``) counts once; a key that already produced an event is
rate-limited; the same XID on the same GPU ``escalate_after`` times within
``escalate_window_s`` escalates (an app-level XID becomes a GPU reset); ECC, thermal and lost
states are edge-triggered, and ``gpu.healthy`` follows when every problem of a GPU has been
quiet for ``clear_after_s``. Event builders here are shared with ``surefoot inject`` so an
injected fault is exactly the event a real one makes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify

from events._catalog import (
    CRITICAL,
    DETECTOR_KERNEL_LOG,
    DETECTOR_NVML,
    FATAL,
    WARNING,
    Event,
    GpuEcc,
    GpuHealthy,
    GpuLost,
    GpuThermal,
    GpuXid,
    build,
)
from events._errors import (
    DriverNotFoundError,
    GpuLostError,
    ProbeError,
    ProbeTimeoutError,
)
from events._kmsg import KernelXid, parse_xid_line
from events._probe import (
    DBE_EVENT,
    THERMAL_REASONS,
    GpuInfo,
    GpuProbe,
    GpuReading,
    decode_clock_reasons,
    pci_key,
)
from events._xid import RESET_GPU, SCHEDULE_RESET, classify, rule_for

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]


@dataclass(frozen=True)
class GpuSourceSettings:
    """Settings of ``surefoot source gpu`` (built from SUREFOOT_* / flags in the entry point)."""

    node: str
    sink: str | None = None
    poll_interval_s: float = 5.0
    event_wait_ms: int = 1000
    nvml_deadline_s: float = 2.0
    dedupe_window_s: float = 2.0
    rate_limit_s: float = 60.0
    escalate_after: int = 3
    escalate_window_s: float = 600.0
    clear_after_s: float = 120.0
    temperature_limit_c: int = 90
    kernel_log: str | None = None  # "/dev/kmsg", "journal", a file path, or None (off)
    health_host: str = "127.0.0.1"
    health_port: int = 0
    emit_ignored: bool = True  # emit ignorable XIDs (43, 45, ...) as info events

    @property
    def source(self) -> str:
        return f"/surefoot/sources/gpu/{self.node}"


# --- builders (shared with fault injection) ----------------------------------------------


def xid_event(settings: GpuSourceSettings, gpu: GpuInfo | None, xid: int, *, message: str = "",
              pid: int | None = None, detector: str = DETECTOR_NVML, repeats: int = 1,
              ecc_uncontained: bool | None = None, pci_bus_id: str | None = None) -> Event:
    verdict = classify(xid, message=message, ecc_uncontained=ecc_uncontained, repeats=repeats,
                       escalate_after=settings.escalate_after)
    return build(
        GpuXid(
            node=settings.node, xid=xid, severity=verdict.severity, action=verdict.action,
            fatal=verdict.fatal, gpu=gpu.index if gpu else None, uuid=gpu.uuid if gpu else None,
            pci_bus_id=(gpu.pci_bus_id if gpu else None) or pci_bus_id,
            mnemonic=verdict.mnemonic, message=message or rule_for(xid).mnemonic, pid=pid,
            count=repeats, escalated=verdict.escalated, detector=detector,
        ),
        source=settings.source,
    )


def ecc_event(settings: GpuSourceSettings, gpu: GpuInfo | None, reading: GpuReading, *,
              new_uncorrected: bool, detector: str = DETECTOR_NVML) -> Event:
    failure = bool(reading.remapped_rows_failure)
    if failure or new_uncorrected:
        severity, action = (FATAL if failure else CRITICAL), RESET_GPU
    else:  # only a pending remap / retirement: reset at the next opportunity
        severity, action = WARNING, SCHEDULE_RESET
    return build(
        GpuEcc(
            node=settings.node, severity=severity, action=action, fatal=action == RESET_GPU,
            gpu=gpu.index if gpu else reading.index, uuid=gpu.uuid if gpu else None,
            pci_bus_id=gpu.pci_bus_id if gpu else None,
            volatile_uncorrected=reading.ecc_volatile_uncorrected,
            volatile_corrected=reading.ecc_volatile_corrected,
            retired_pages_dbe=reading.retired_pages_dbe,
            retired_pages_pending=reading.retired_pages_pending,
            remapped_rows_uncorrectable=reading.remapped_rows_uncorrectable,
            remapped_rows_pending=reading.remapped_rows_pending,
            remapped_rows_failure=reading.remapped_rows_failure,
            detector=detector,
        ),
        source=settings.source,
    )


def thermal_event(settings: GpuSourceSettings, gpu: GpuInfo | None, reasons: Iterable[str],
                  temperature_c: int | None, *, detector: str = DETECTOR_NVML) -> Event:
    rs = tuple(reasons)
    severity = CRITICAL if {"hw_thermal", "hw_power_brake"} & set(rs) else WARNING
    return build(
        GpuThermal(node=settings.node, severity=severity, reasons=rs,
                   temperature_c=temperature_c, gpu=gpu.index if gpu else None,
                   uuid=gpu.uuid if gpu else None, pci_bus_id=gpu.pci_bus_id if gpu else None,
                   detector=detector),
        source=settings.source,
    )


def lost_event(settings: GpuSourceSettings, gpu: GpuInfo | None, reason: str, *,
               detector: str = DETECTOR_NVML, pci_bus_id: str | None = None) -> Event:
    return build(
        GpuLost(node=settings.node, reason=reason, gpu=gpu.index if gpu else None,
                uuid=gpu.uuid if gpu else None,
                pci_bus_id=(gpu.pci_bus_id if gpu else None) or pci_bus_id, detector=detector),
        source=settings.source,
    )


def healthy_event(settings: GpuSourceSettings, gpu: GpuInfo | None, cleared: Iterable[str],
                  *, detector: str = DETECTOR_NVML) -> Event:
    return build(
        GpuHealthy(node=settings.node, cleared=tuple(sorted(cleared)),
                   gpu=gpu.index if gpu else None, uuid=gpu.uuid if gpu else None,
                   pci_bus_id=gpu.pci_bus_id if gpu else None, detector=detector),
        source=settings.source,
    )


# --- the deduplicating stream -------------------------------------------------------------


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
            occ = track.occurrences
            if occ and now - occ[-1] < s.dedupe_window_s:
                track.suppressed += 1
                self.suppressed += 1
                return None  # the same occurrence, seen again (other path, or a burst)
            occ.append(now)
            while occ and now - occ[0] > s.escalate_window_s:
                occ.popleft()
            gtrack = self._track(key)
            event = xid_event(s, gpu, xid, message=message, pid=pid, detector=detector,
                              repeats=len(occ), ecc_uncontained=gtrack.ecc_uncontained,
                              pci_bus_id=pci)
            data = event.data
            if data["action"] == "ignore" and not s.emit_ignored:
                return None
            if data["action"] != "ignore":
                gtrack.problems[f"xid:{xid}"] = now
            rank = _RANK[data["severity"]]
            newly_escalated = data["escalated"] and (
                track.escalated_at is None or now - track.escalated_at > s.escalate_window_s
            )
            limited = track.last_emitted is not None and now - track.last_emitted < s.rate_limit_s
            if limited and not newly_escalated and rank <= track.last_severity_rank:
                track.suppressed += 1
                self.suppressed += 1
                return None
            if newly_escalated:
                track.escalated_at = now
            track.last_emitted = now
            track.last_severity_rank = rank
            return self._out(event)

    def kernel_line(self, line: str) -> Event | None:
        parsed: KernelXid | None = parse_xid_line(line)
        if parsed is None:
            return None
        return self.xid(parsed.xid, pci=parsed.pci, message=parsed.message, pid=parsed.pid,
                        detector=DETECTOR_KERNEL_LOG)

    # readings --------------------------------------------------------------------------
    def reading(self, reading: GpuReading) -> list[Event]:
        s = self.settings
        out: list[Event] = []
        with self._lock:
            gpu = self._by_index.get(reading.index)
            key = self._key(gpu, None) if gpu else f"index:{reading.index}"
            t = self._track(key)
            now = self._clock()
            if t.lost:
                t.lost = False  # it answers again
                t.problems["lost"] = now
            # ECC: new uncorrected errors, or a pending/failed remap or retirement.
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
                out.append(self._out(ecc_event(s, gpu, reading, new_uncorrected=new_unc)))
            elif any(flags):
                t.problems["ecc"] = now  # still pending: keep the problem open
            # Thermal: slowdown reasons, or temperature over the limit (5 degree hysteresis).
            reasons = set(decode_clock_reasons(reading.clock_reasons)) & THERMAL_REASONS
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
                    all_reasons = sorted(current | (set(decode_clock_reasons(
                        reading.clock_reasons)) & {"sw_power_cap"}))
                    out.append(self._out(thermal_event(s, gpu, all_reasons, temp)))
                    t.last_emit["thermal"] = now
            t.thermal = current
            out.extend(self._maybe_healthy(gpu, t, now))
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


# --- the source ---------------------------------------------------------------------------

IDLE = "idle"
RUNNING = "running"
STARTING = "starting"
STOPPED = "stopped"


class GpuHealthSource:
    """Runs the probe's event loop, the poll loop and the kernel-log reader into one stream.

    Without a driver it stays ``idle``: one log line, no events, health endpoint still up.
    """

    def __init__(
        self,
        settings: GpuSourceSettings,
        probe: GpuProbe,
        emit: Emit,
        *,
        clock: Callable[[], float] = time.monotonic,
        kernel_lines: Callable[[threading.Event], Iterable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.probe = probe
        self.stream = GpuEventStream(settings, emit, clock=clock)
        self._clock = clock
        self._kernel_lines = kernel_lines
        self.state = STARTING
        self.reason = ""
        self.gpus: list[GpuInfo] = []
        self.last_poll: float | None = None
        self.last_readings: dict[int, GpuReading] = {}
        self.errors = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> bool:
        """Open the probe. False (and state idle) when there is no driver."""
        try:
            self.gpus = self.probe.open()
        except DriverNotFoundError as exc:
            self.state = IDLE
            self.reason = f"no NVIDIA driver: {exc}"
            log.warning("GPU health source idle on node %s: %s", self.settings.node, exc)
            return False
        self.stream.set_gpus(self.gpus)
        self.state = RUNNING
        log.info("GPU health source watching %d GPU(s) on node %s", len(self.gpus),
                 self.settings.node)
        return True

    def poll_once(self) -> list[Event]:
        out: list[Event] = []
        for gpu in self.gpus:
            try:
                reading = self.probe.read(gpu.index)
            except GpuLostError as exc:
                ev = self.stream.lost(gpu.index, str(exc) or "NVML_ERROR_GPU_IS_LOST")
                if ev is not None:
                    out.append(ev)
                continue
            except ProbeTimeoutError as exc:
                self.errors += 1
                log.error("GPU %d: %s", gpu.index, exc)
                continue
            except ProbeError as exc:
                self.errors += 1
                log.warning("GPU %d: %s", gpu.index, exc)
                continue
            self.last_readings[gpu.index] = reading
            out.extend(self.stream.reading(reading))
        out.extend(self.stream.tick())
        self.last_poll = self._clock()
        return out

    def wait_events_once(self, timeout_ms: int) -> list[Event]:
        try:
            events = self.probe.wait_events(timeout_ms)
        except GpuLostError as exc:
            ev = self.stream.lost(exc.gpu, str(exc))
            return [ev] if ev else []
        out: list[Event] = []
        for pe in events:
            gpu = self.stream.gpu_by_index(pe.gpu)
            if pe.kind == DBE_EVENT:
                out.extend(self._read_now(pe.gpu))
            elif pe.xid is not None:
                if pe.xid == 48:
                    self._read_now(pe.gpu)  # learn the containment before deciding
                ev = self.stream.xid(pe.xid, gpu=gpu, detector=DETECTOR_NVML)
                if ev is not None:
                    out.append(ev)
        return out

    def _read_now(self, index: int) -> list[Event]:
        if index < 0:
            return []
        try:
            return self.stream.reading(self.probe.read(index))
        except GpuLostError as exc:
            ev = self.stream.lost(index, str(exc))
            return [ev] if ev else []
        except ProbeError as exc:
            log.warning("GPU %d: %s", index, exc)
            return []

    def feed_kernel_line(self, line: str) -> Event | None:
        return self.stream.kernel_line(line)

    # loops
    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set. Idle (no driver): just wait."""
        if self.state == STARTING:
            self.start()
        if self.state == IDLE:
            stop.wait()
            self.state = STOPPED
            return
        self._spawn(self._event_loop, stop, "gpu-events")
        if self._kernel_lines is not None:
            self._spawn(self._kernel_loop, stop, "gpu-kernel-log")
        try:
            while not stop.is_set():
                self.poll_once()
                stop.wait(self.settings.poll_interval_s)
        finally:
            for t in self._threads:
                t.join(timeout=self.settings.event_wait_ms / 1000 + self.settings.nvml_deadline_s
                       + 1)
            self.probe.close()
            self.state = STOPPED

    def _spawn(self, fn: Callable[[threading.Event], None], stop: threading.Event,
               name: str) -> None:
        t = threading.Thread(target=fn, args=(stop,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _event_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.wait_events_once(self.settings.event_wait_ms)
            except ProbeError as exc:
                self.errors += 1
                log.error("NVML event wait: %s", exc)
                stop.wait(self.settings.poll_interval_s)

    def _kernel_loop(self, stop: threading.Event) -> None:
        assert self._kernel_lines is not None
        try:
            for line in self._kernel_lines(stop):
                self.feed_kernel_line(line)
                if stop.is_set():
                    break
        except OSError as exc:
            log.warning("kernel log unavailable (%s); NVML path only", exc)

    def status(self) -> dict[str, Any]:
        age = None if self.last_poll is None else round(self._clock() - self.last_poll, 3)
        return {
            "state": self.state,
            "reason": self.reason,
            "node": self.settings.node,
            "gpus": [dataclasses.asdict(g) for g in self.gpus],
            "last_poll_age_s": age,
            "emitted": self.stream.emitted,
            "suppressed": self.stream.suppressed,
            "errors": self.errors,
            "readings": {str(i): dataclasses.asdict(r) for i, r in self.last_readings.items()},
        }

    def healthy(self) -> bool:
        """Alive: idle without a driver, or polling on schedule."""
        if self.state == IDLE:
            return True
        if self.state != RUNNING or self.last_poll is None:
            return self.state == STARTING
        limit = 3 * self.settings.poll_interval_s + self.settings.nvml_deadline_s * 8
        return self._clock() - self.last_poll <= limit


def create_health_app(source: GpuHealthSource) -> Flask:
    """GET /healthz (200 while alive, idle included; 503 when polling stalled), GET /status."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        ok = source.healthy()
        resp = jsonify({"status": source.state if ok else "stalled", "reason": source.reason})
        resp.status_code = 200 if ok else 503
        return resp

    @app.get("/status")
    def status() -> Response:
        return jsonify(source.status())

    return app


# Exit codes of ``surefoot source gpu --check``.
CHECK_OK = 0
CHECK_FAILED = 1  # NVML answered, but a GPU is lost or a call failed / hung
CHECK_NO_DRIVER = 3  # no NVIDIA driver / NVML library, or pynvml missing


def check(probe: GpuProbe) -> tuple[int, list[str]]:
    """Open the probe, read every GPU once; (exit code, report lines)."""
    lines: list[str] = []
    try:
        gpus = probe.open()
    except DriverNotFoundError as exc:
        return CHECK_NO_DRIVER, [f"no NVIDIA driver: {exc}"]
    except ProbeError as exc:
        return CHECK_FAILED, [f"NVML failed to start: {exc}"]
    code = CHECK_OK
    lines.append(f"{len(gpus)} GPU(s)")
    try:
        for gpu in gpus:
            lines.append(f"GPU {gpu.index}: {gpu.name} uuid={gpu.uuid} pci={gpu.pci_bus_id}")
            try:
                r = probe.read(gpu.index)
            except GpuLostError as exc:
                lines.append(f"  LOST: {exc}")
                code = CHECK_FAILED
                continue
            except ProbeError as exc:
                lines.append(f"  FAILED: {exc}")
                code = CHECK_FAILED
                continue
            reasons = ",".join(decode_clock_reasons(r.clock_reasons)) or "none"
            lines.append(
                f"  temperature={r.temperature_c}C ecc_uncorrected={r.ecc_volatile_uncorrected}"
                f" ecc_corrected={r.ecc_volatile_corrected} retired_dbe={r.retired_pages_dbe}"
                f" retired_pending={r.retired_pages_pending}"
                f" remap_unc={r.remapped_rows_uncorrectable} remap_pending="
                f"{r.remapped_rows_pending} remap_failure={r.remapped_rows_failure}"
                f" clock_reasons={reasons}"
            )
            if r.not_supported:
                lines.append(f"  not supported: {', '.join(r.not_supported)}")
            if r.errors:
                lines.append(f"  errors: {'; '.join(r.errors)}")
        events = getattr(probe, "event_types", None)
        if isinstance(events, dict):
            lines.append("NVML events registered: " + (
                ", ".join(f"GPU {i}: 0x{m:x}" for i, m in sorted(events.items())) or "none"))
    finally:
        probe.close()
    return code, lines


class GpuSourceService:
    """The GPU source and its health endpoint, running in background threads.

    ``surefoot source gpu`` and ``surefoot up`` both use it: ``start()`` binds the health port
    (OSError when taken) and starts the loops; ``stop()`` ends them and closes the probe.
    """

    def __init__(
        self,
        settings: GpuSourceSettings,
        *,
        emit: Emit,
        probe: GpuProbe | None = None,
        kernel_lines: Callable[[threading.Event], Iterable[str]] | None = None,
    ) -> None:
        if probe is None:
            from events._nvml import NvmlProbe

            probe = NvmlProbe(deadline_s=settings.nvml_deadline_s)
        self.source = GpuHealthSource(settings, probe, emit, kernel_lines=kernel_lines)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: Any = None

    @property
    def health_url(self) -> str:
        return str(self._http.url) if self._http is not None else ""

    def start(self) -> GpuSourceService:
        from events._http import HttpServer

        s = self.source.settings
        self._http = HttpServer(create_health_app(self.source), s.health_host,
                                s.health_port).start()
        self.source.start()
        self._thread = threading.Thread(target=self.source.run, args=(self._stop,),
                                        name="gpu-source", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.wait(timeout=10)
        if self._http is not None:
            self._http.stop()

    def __enter__(self) -> GpuSourceService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

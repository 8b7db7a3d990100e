"""The GPU health source of one node: the probe's loops, and its health endpoint.

``GpuHealthSource`` runs NVML's event wait, a poll of every GPU and the kernel-log reader into
one ``GpuEventStream`` (which decides what becomes an event); ``GpuSourceService`` adds the
health endpoint and the threads, for ``surefoot source gpu`` and ``surefoot up``. Without a
driver the source stays ``idle``: one log line, no events, the health endpoint still up.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify

from events._catalog import DETECTOR_NVML, Event
from events._errors import (
    DriverNotFoundError,
    GpuLostError,
    ProbeError,
    ProbeTimeoutError,
)
from events._gpu_check import CHECK_FAILED, CHECK_NO_DRIVER, CHECK_OK, check
from events._gpu_events import (
    GpuSourceSettings,
    ecc_event,
    healthy_event,
    lost_event,
    thermal_event,
    xid_event,
)
from events._gpu_stream import Emit, GpuEventStream
from events._probe import DBE_EVENT, GpuInfo, GpuProbe, GpuReading

log = logging.getLogger(__name__)

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


def health_blueprint(source: GpuHealthSource) -> Blueprint:
    """GET /healthz (200 while alive, idle included; 503 when polling stalled), GET /status."""
    bp = Blueprint("gpu_health", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        ok = source.healthy()
        resp = jsonify({"status": source.state if ok else "stalled", "reason": source.reason})
        resp.status_code = 200 if ok else 503
        return resp

    @bp.get("/status")
    def status() -> Response:
        return jsonify(source.status())

    return bp


def create_health_app(source: GpuHealthSource) -> Flask:
    """A Flask app serving :func:`health_blueprint`."""
    app = Flask(__name__)
    app.register_blueprint(health_blueprint(source))
    return app


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


__all__ = [
    "CHECK_FAILED",
    "CHECK_NO_DRIVER",
    "CHECK_OK",
    "Emit",
    "GpuEventStream",
    "GpuHealthSource",
    "GpuSourceService",
    "GpuSourceSettings",
    "check",
    "create_health_app",
    "ecc_event",
    "health_blueprint",
    "healthy_event",
    "lost_event",
    "thermal_event",
    "xid_event",
]

"""What the GPU health source needs from a GPU, and a watchdog for calls that may hang.

The probe interface keeps the source free of NVML: the real probe (events._nvml) and the scripted
test double (events._probe_fake) both implement it. NVML calls can hang when a GPU is in a bad
state, so every call goes through a Watchdog: past its deadline the caller gets
ProbeTimeoutError and moves on, while the stuck call is left to finish on its own thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from events._errors import ProbeTimeoutError

T = TypeVar("T")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None  # as NVML spells it: "00000000:3B:00.0"


@dataclass(frozen=True)
class GpuReading:
    """One poll of a GPU. None means the call is not supported (or failed; see ``errors``)."""

    index: int
    temperature_c: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_volatile_corrected: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    clock_reasons: int | None = None  # NVML clocks event reason bit mask
    not_supported: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


XID_EVENT = "xid"
DBE_EVENT = "double_bit_ecc"


@dataclass(frozen=True)
class ProbeEvent:
    """An asynchronous NVML event: an XID (``xid`` set) or a double-bit ECC error."""

    gpu: int
    kind: str = XID_EVENT
    xid: int | None = None


class GpuProbe(Protocol):
    def open(self) -> list[GpuInfo]:
        """Initialise and list the GPUs. DriverNotFoundError when there is no driver."""

    def read(self, index: int) -> GpuReading:
        """Poll one GPU. GpuLostError when it is gone; ProbeTimeoutError when NVML hangs."""

    def wait_events(self, timeout_ms: int) -> list[ProbeEvent]:
        """Block up to ``timeout_ms`` for XID / ECC events; [] when none came."""

    def close(self) -> None: ...


# NVML clocks event reasons (nvmlClocksEventReason*), by name.
CLOCK_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}
# Reasons that mean the GPU is too hot or its power delivery is failing. Software power
# capping alone is routine under full load and does not count.
THERMAL_REASONS = frozenset({"sw_thermal", "hw_thermal", "hw_slowdown", "hw_power_brake"})


def decode_clock_reasons(mask: int | None) -> tuple[str, ...]:
    if not mask:
        return ()
    return tuple(name for bit, name in sorted(CLOCK_REASONS.items()) if mask & bit)


def pci_key(bus_id: str | None) -> str | None:
    """Normalise a PCI address ("00000000:3B:00.0", "0000:3b:00") to "0000:3b:00"."""
    if not bus_id:
        return None
    parts = bus_id.strip().lower().split(":")
    if len(parts) < 3:
        return None
    try:
        domain = int(parts[-3], 16)
        bus = int(parts[-2], 16)
        device = int(parts[-1].split(".")[0], 16)
    except ValueError:
        return None
    return f"{domain:04x}:{bus:02x}:{device:02x}"


class Watchdog:
    """Runs calls on a worker thread and stops waiting at a deadline.

    A call that misses its deadline raises ProbeTimeoutError in the caller; its worker is
    abandoned (it may never come back) and the next call gets a fresh worker. After
    ``max_stuck`` abandoned workers are still hung, calls fail at once instead of piling up
    threads.
    """

    def __init__(self, deadline_s: float, *, max_stuck: int = 4, name: str = "nvml") -> None:
        self.deadline_s = deadline_s
        self.max_stuck = max_stuck
        self.name = name
        self._lock = threading.Lock()
        self._stuck = 0
        self._worker: _Worker | None = None

    @property
    def stuck(self) -> int:
        with self._lock:
            return self._stuck

    def call(self, what: str, fn: Callable[..., T], *args: Any, deadline_s: float | None = None
             ) -> T:
        deadline = self.deadline_s if deadline_s is None else deadline_s
        with self._lock:
            if self._stuck >= self.max_stuck:
                raise ProbeTimeoutError(
                    f"{self._stuck} {self.name} calls are still hung; not calling {what}"
                )
            if self._worker is None:
                self._worker = _Worker(self, f"{self.name}-watchdog")
            worker = self._worker
        job = _Job(fn, args)
        worker.jobs.put(job)
        if not job.done.wait(deadline):
            with self._lock:
                if not job.done.is_set():
                    job.abandoned = True
                    self._stuck += 1
                    worker.abandoned = True
                    if self._worker is worker:
                        self._worker = None
                    raise ProbeTimeoutError(f"{what} did not return within {deadline:g}s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _release(self) -> None:
        with self._lock:
            self._stuck -= 1


class _Job:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False


class _Worker:
    def __init__(self, owner: Watchdog, name: str) -> None:
        self.owner = owner
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.abandoned = False
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while not self.abandoned:
            job = self.jobs.get()
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # handed to the caller
                job.error = exc
            with self.owner._lock:
                job.done.set()
                late = job.abandoned
            if late:
                self.owner._release()
                return

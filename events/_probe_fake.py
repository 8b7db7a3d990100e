"""A scripted GPU probe: the test double of the NVML probe (also used by bench/events.py).

Tests, drills and benchmarks need GPU faults on machines without a GPU, on cue. FakeProbe plays a
script: per GPU, a queue of readings (the last one repeats), a queue of XID / ECC events, and
one-shot faults (an exception to raise, or a hang that lasts until released). Nothing sleeps:
``wait_events`` blocks on a condition only while the script has nothing to give, and a hang
blocks on an Event the test controls. Example::

    probe = FakeProbe(gpus=2)
    probe.set_reading(0, temperature_c=95, clock_reasons=0x40)
    probe.push_xid(1, 79)
    probe.fail_next("read", GpuLostError(1))
    gate = probe.hang_next("read")      # the next read blocks until gate.set()
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from typing import Any

from events._errors import DriverNotFoundError
from events._probe import DBE_EVENT, XID_EVENT, GpuInfo, GpuReading, ProbeEvent


class FakeProbe:
    """Implements events._probe.GpuProbe from a script. Thread-safe."""

    def __init__(self, gpus: int = 1, *, no_driver: bool = False,
                 pci_bus_ids: list[str] | None = None) -> None:
        self._lock = threading.Condition()
        self._no_driver = no_driver
        ids = pci_bus_ids or [f"00000000:{0x3B + i:02X}:00.0" for i in range(gpus)]
        self.gpus = [GpuInfo(index=i, uuid=f"GPU-fake-{i}", name="Fake GPU", pci_bus_id=ids[i])
                     for i in range(gpus)]
        self._readings: dict[int, deque[GpuReading]] = {
            i: deque([GpuReading(index=i, temperature_c=40, ecc_volatile_uncorrected=0,
                                 ecc_volatile_corrected=0, remapped_rows_uncorrectable=0,
                                 remapped_rows_pending=False, remapped_rows_failure=False,
                                 clock_reasons=0)])
            for i in range(gpus)
        }
        self._events: deque[ProbeEvent] = deque()
        self._faults: dict[str, deque[BaseException | threading.Event]] = {}
        self.calls: list[str] = []
        self.opened = False
        self.closed = False

    # script
    def set_reading(self, gpu: int, **fields: Any) -> None:
        """From now on ``read(gpu)`` returns the last reading with ``fields`` changed."""
        with self._lock:
            last = self._readings[gpu][-1]
            self._readings[gpu] = deque([dataclasses.replace(last, **fields)])

    def queue_readings(self, gpu: int, *readings: dict[str, Any]) -> None:
        """Successive reads return these (each applied over the previous); the last repeats."""
        with self._lock:
            q = self._readings[gpu]
            only_current = len(q) == 1
            base = q[-1]
            for fields in readings:
                base = dataclasses.replace(base, **fields)
                q.append(base)
            if only_current and readings:
                q.popleft()  # the repeating reading is replaced, not read once more

    def push_xid(self, gpu: int, xid: int) -> None:
        with self._lock:
            self._events.append(ProbeEvent(gpu=gpu, kind=XID_EVENT, xid=xid))
            self._lock.notify_all()

    def push_dbe(self, gpu: int) -> None:
        with self._lock:
            self._events.append(ProbeEvent(gpu=gpu, kind=DBE_EVENT))
            self._lock.notify_all()

    def fail_next(self, call: str, error: BaseException) -> None:
        """The next ``call`` ("open", "read", "wait_events") raises ``error``."""
        with self._lock:
            self._faults.setdefault(call, deque()).append(error)

    def hang_next(self, call: str) -> threading.Event:
        """The next ``call`` blocks until the returned Event is set."""
        gate = threading.Event()
        with self._lock:
            self._faults.setdefault(call, deque()).append(gate)
        return gate

    def _fault(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
            q = self._faults.get(call)
            fault = q.popleft() if q else None
        if isinstance(fault, threading.Event):
            fault.wait()
        elif fault is not None:
            raise fault

    # GpuProbe
    def open(self) -> list[GpuInfo]:
        self._fault("open")
        if self._no_driver:
            raise DriverNotFoundError("NVML Shared Library Not Found")
        self.opened = True
        return list(self.gpus)

    def read(self, index: int) -> GpuReading:
        self._fault("read")
        with self._lock:
            q = self._readings[index]
            return q.popleft() if len(q) > 1 else q[0]

    def wait_events(self, timeout_ms: int) -> list[ProbeEvent]:
        self._fault("wait_events")
        with self._lock:
            if not self._events and timeout_ms > 0:
                self._lock.wait(timeout_ms / 1000)
            if not self._events:
                return []
            return [self._events.popleft()]

    def close(self) -> None:
        self.closed = True
        with self._lock:
            self._lock.notify_all()

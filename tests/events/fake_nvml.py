"""A stand-in for the ``pynvml`` module, so the real NvmlProbe code runs without a GPU.

Constants and the NVMLError class come from the installed nvidia-ml-py, so a name the probe uses
that pynvml does not have fails here too. Behaviour is scripted per function name.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pynvml


class FakeNvml:
    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: int = 2) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType", "nvmlClocks")):
                setattr(self, name, getattr(pynvml, name))
        self.gpus = gpus
        self.not_supported: set[str] = set()
        self.lost: set[int] = set()
        self.hangs: dict[str, threading.Event] = {}
        self.init_error: int | None = None
        self.events: list[tuple[int, int, int]] = []  # (gpu, eventType, eventData)
        self.values: dict[int, dict[str, Any]] = {
            i: {"temp": 45, "unc": 0, "cor": 3, "pages": [], "pending": 0,
                "rows": (0, 0, 0, 0), "reasons": 0} for i in range(gpus)
        }
        self.registered: dict[int, int] = {}
        self.calls: list[str] = []
        self.shutdown = False

    def _enter(self, name: str, gpu: int | None = None) -> None:
        self.calls.append(name)
        gate = self.hangs.get(name)
        if gate is not None:
            gate.wait()
        if name in self.not_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gpu is not None and gpu in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        return SimpleNamespace(index=i)

    def nvmlDeviceGetIndex(self, h: Any) -> int:
        return int(h.index)

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        self._enter("nvmlDeviceGetUUID", h.index)
        return f"GPU-{h.index:08d}"

    def nvmlDeviceGetName(self, h: Any) -> bytes:
        self._enter("nvmlDeviceGetName", h.index)
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        self._enter("nvmlDeviceGetPciInfo", h.index)
        return SimpleNamespace(busId=f"00000000:{0x18 + h.index:02X}:00.0".encode())

    def nvmlEventSetCreate(self) -> Any:
        self._enter("nvmlEventSetCreate")
        return object()

    def nvmlEventSetFree(self, es: Any) -> None:
        pass

    def nvmlDeviceGetSupportedEventTypes(self, h: Any) -> int:
        self._enter("nvmlDeviceGetSupportedEventTypes", h.index)
        return int(pynvml.nvmlEventTypeAll)

    def nvmlDeviceRegisterEvents(self, h: Any, mask: int, es: Any) -> None:
        self._enter("nvmlDeviceRegisterEvents", h.index)
        self.registered[h.index] = mask

    def nvmlEventSetWait_v2(self, es: Any, timeout_ms: int) -> Any:
        self._enter("nvmlEventSetWait_v2")
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        gpu, etype, data = self.events.pop(0)
        return SimpleNamespace(device=SimpleNamespace(index=gpu), eventType=etype, eventData=data)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature", h.index)
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return int(self.values[h.index]["temp"])

    def nvmlDeviceGetTotalEccErrors(self, h: Any, etype: int, counter: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors", h.index)
        assert counter == pynvml.NVML_VOLATILE_ECC
        v = self.values[h.index]
        return int(v["unc"] if etype == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else v["cor"])

    def nvmlDeviceGetRetiredPages(self, h: Any, cause: int) -> list[int]:
        self._enter("nvmlDeviceGetRetiredPages", h.index)
        return list(self.values[h.index]["pages"])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: Any) -> int:
        self._enter("nvmlDeviceGetRetiredPagesPendingStatus", h.index)
        return int(self.values[h.index]["pending"])

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        self._enter("nvmlDeviceGetRemappedRows", h.index)
        return self.values[h.index]["rows"]  # type: ignore[no-any-return]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", h.index)
        return int(self.values[h.index]["reasons"])

"""The real GPU probe, on nvidia-ml-py (``pynvml``), imported lazily.

Reads what tells a serving node its GPU is failing: XID critical errors and double-bit ECC
events (``nvmlEventSetWait_v2``), volatile uncorrected/corrected ECC counts, retired pages and
their pending state, remapped rows (pending, failure), clock event reasons and temperature.
``NVMLError_GpuIsLost`` becomes GpuLostError; a missing library or driver becomes
DriverNotFoundError; NotSupported leaves the field None and names the call in
``not_supported``. Every NVML call runs under a Watchdog deadline.
"""

from __future__ import annotations

import logging
from typing import Any

from events._errors import DriverNotFoundError, GpuLostError, ProbeError, ProbeTimeoutError
from events._probe import DBE_EVENT, XID_EVENT, GpuInfo, GpuReading, ProbeEvent, Watchdog

log = logging.getLogger(__name__)


def import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise DriverNotFoundError(
            f"pynvml is not importable ({exc}); install nvidia-ml-py"
        ) from None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlProbe:
    """GpuProbe over NVML. ``nvml`` is the pynvml module (a stand-in in tests)."""

    def __init__(self, *, deadline_s: float = 2.0, nvml: Any = None) -> None:
        self._nvml = nvml
        self._calls = Watchdog(deadline_s, name="nvml")
        self._events = Watchdog(deadline_s, name="nvml-events")
        self._handles: list[Any] = []
        self._event_set: Any = None
        self.event_types: dict[int, int] = {}  # gpu -> registered event mask
        self.unsupported: set[str] = set()

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            self._nvml = import_pynvml()
        return self._nvml

    def _code(self, exc: BaseException) -> int | None:
        return getattr(exc, "value", None) if isinstance(exc, self.nvml.NVMLError) else None

    def _call(self, what: str, fn: Any, *args: Any, gpu: int | None = None) -> Any:
        n = self.nvml
        try:
            return self._calls.call(what, fn, *args)
        except n.NVMLError as exc:
            code = self._code(exc)
            if code == n.NVML_ERROR_GPU_IS_LOST:
                raise GpuLostError(gpu, f"{what}: GPU is lost") from None
            if code in (n.NVML_ERROR_LIBRARY_NOT_FOUND, n.NVML_ERROR_DRIVER_NOT_LOADED):
                raise DriverNotFoundError(f"{what}: {exc}") from None
            if code == n.NVML_ERROR_TIMEOUT:
                raise ProbeTimeoutError(f"{what}: NVML timeout") from None
            raise ProbeError(f"{what}: {exc}") from exc

    def open(self) -> list[GpuInfo]:
        n = self.nvml
        self._call("nvmlInit", n.nvmlInit)
        count = int(self._call("nvmlDeviceGetCount", n.nvmlDeviceGetCount))
        infos = []
        self._handles = []
        for i in range(count):
            h = self._call("nvmlDeviceGetHandleByIndex", n.nvmlDeviceGetHandleByIndex, i, gpu=i)
            self._handles.append(h)
            uuid = self._optional("nvmlDeviceGetUUID", n.nvmlDeviceGetUUID, h, gpu=i)
            name = self._optional("nvmlDeviceGetName", n.nvmlDeviceGetName, h, gpu=i)
            pci = self._optional("nvmlDeviceGetPciInfo", n.nvmlDeviceGetPciInfo, h, gpu=i)
            bus_id = None
            if pci is not None:
                bus_id = _text(getattr(pci, "busId", "")) or None
            infos.append(GpuInfo(index=i, uuid=_text(uuid) if uuid is not None else None,
                                 name=_text(name) if name is not None else None,
                                 pci_bus_id=bus_id))
        self._register_events()
        return infos

    def _optional(self, what: str, fn: Any, *args: Any, gpu: int | None = None,
                  missing: list[str] | None = None) -> Any:
        """The call's value, or None when NotSupported (or the function is missing)."""
        n = self.nvml
        try:
            return self._call(what, fn, *args, gpu=gpu)
        except ProbeError as exc:
            cause = exc.__cause__
            code = self._code(cause) if cause is not None else None
            absent = (n.NVML_ERROR_NOT_SUPPORTED, getattr(n, "NVML_ERROR_FUNCTION_NOT_FOUND", -1))
            if code in absent:
                self.unsupported.add(what)
                if missing is not None:
                    missing.append(what)
                return None
            raise

    def _register_events(self) -> None:
        n = self.nvml
        try:
            self._event_set = self._call("nvmlEventSetCreate", n.nvmlEventSetCreate)
        except ProbeError as exc:
            log.warning("NVML events unavailable (%s); only polling and the kernel log", exc)
            self._event_set = None
            return
        wanted = n.nvmlEventTypeXidCriticalError | n.nvmlEventTypeDoubleBitEccError
        for i, h in enumerate(self._handles):
            supported = self._optional("nvmlDeviceGetSupportedEventTypes",
                                       n.nvmlDeviceGetSupportedEventTypes, h, gpu=i)
            mask = wanted & int(supported) if supported is not None else 0
            if not mask:
                continue
            try:
                self._call("nvmlDeviceRegisterEvents", n.nvmlDeviceRegisterEvents, h, mask,
                           self._event_set, gpu=i)
                self.event_types[i] = mask
            except ProbeError as exc:
                log.warning("GPU %d: cannot register NVML events: %s", i, exc)

    def read(self, index: int) -> GpuReading:
        n = self.nvml
        h = self._handles[index]
        missing: list[str] = []
        errors: list[str] = []

        def opt(what: str, fn: Any, *args: Any) -> Any:
            try:
                return self._optional(what, fn, *args, gpu=index, missing=missing)
            except (GpuLostError, ProbeTimeoutError):
                raise  # the GPU is gone or NVML hangs: the rest of this read would too
            except ProbeError as exc:
                errors.append(str(exc))
                return None

        temperature = opt("nvmlDeviceGetTemperature", n.nvmlDeviceGetTemperature, h,
                          n.NVML_TEMPERATURE_GPU)
        unc = opt("nvmlDeviceGetTotalEccErrors(uncorrected)", n.nvmlDeviceGetTotalEccErrors, h,
                  n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)
        cor = opt("nvmlDeviceGetTotalEccErrors(corrected)", n.nvmlDeviceGetTotalEccErrors, h,
                  n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC)
        pages = opt("nvmlDeviceGetRetiredPages", n.nvmlDeviceGetRetiredPages, h,
                    n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        pending = opt("nvmlDeviceGetRetiredPagesPendingStatus",
                      n.nvmlDeviceGetRetiredPagesPendingStatus, h)
        rows = opt("nvmlDeviceGetRemappedRows", n.nvmlDeviceGetRemappedRows, h)
        reasons_fn = (getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
                      or n.nvmlDeviceGetCurrentClocksThrottleReasons)
        reasons = opt("nvmlDeviceGetCurrentClocksEventReasons", reasons_fn, h)
        return GpuReading(
            index=index,
            temperature_c=int(temperature) if temperature is not None else None,
            ecc_volatile_uncorrected=int(unc) if unc is not None else None,
            ecc_volatile_corrected=int(cor) if cor is not None else None,
            retired_pages_dbe=len(pages) if pages is not None else None,
            retired_pages_pending=bool(pending) if pending is not None else None,
            remapped_rows_uncorrectable=int(rows[1]) if rows is not None else None,
            remapped_rows_pending=bool(rows[2]) if rows is not None else None,
            remapped_rows_failure=bool(rows[3]) if rows is not None else None,
            clock_reasons=int(reasons) if reasons is not None else None,
            not_supported=tuple(missing),
            errors=tuple(errors),
        )

    def wait_events(self, timeout_ms: int) -> list[ProbeEvent]:
        n = self.nvml
        if self._event_set is None:
            return []
        deadline = timeout_ms / 1000 + self._events.deadline_s
        try:
            data = self._events.call("nvmlEventSetWait_v2", n.nvmlEventSetWait_v2,
                                     self._event_set, timeout_ms, deadline_s=deadline)
        except n.NVMLError as exc:
            code = self._code(exc)
            if code == n.NVML_ERROR_TIMEOUT:
                return []
            if code == n.NVML_ERROR_GPU_IS_LOST:
                raise GpuLostError(None, "nvmlEventSetWait_v2: GPU is lost") from None
            raise ProbeError(f"nvmlEventSetWait_v2: {exc}") from exc
        gpu = self._index_of(data.device)
        if data.eventType & n.nvmlEventTypeXidCriticalError:
            return [ProbeEvent(gpu=gpu, kind=XID_EVENT, xid=int(data.eventData))]
        if data.eventType & n.nvmlEventTypeDoubleBitEccError:
            return [ProbeEvent(gpu=gpu, kind=DBE_EVENT)]
        return []

    def _index_of(self, device: Any) -> int:
        n = self.nvml
        try:
            return int(self._call("nvmlDeviceGetIndex", n.nvmlDeviceGetIndex, device))
        except ProbeError:
            return -1

    def close(self) -> None:
        n = self.nvml
        try:
            if self._event_set is not None:
                self._call("nvmlEventSetFree", n.nvmlEventSetFree, self._event_set)
            self._call("nvmlShutdown", n.nvmlShutdown)
        except (ProbeError, DriverNotFoundError) as exc:
            log.debug("NVML shutdown: %s", exc)

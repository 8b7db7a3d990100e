"""``surefoot source gpu --check``: open NVML, read every GPU once, and say what it answered.

The exit code tells a node's operator (or an init container) at once whether the GPU source
can work there: ``CHECK_OK``, ``CHECK_FAILED`` (NVML answered, but a GPU is lost or a call
failed or hung), ``CHECK_NO_DRIVER`` (no NVIDIA driver or NVML library, or pynvml missing).
"""

from __future__ import annotations

from events._errors import DriverNotFoundError, GpuLostError, ProbeError
from events._probe import GpuInfo, GpuProbe, GpuReading, decode_clock_reasons

CHECK_OK = 0
CHECK_FAILED = 1  # NVML answered, but a GPU is lost or a call failed / hung
CHECK_NO_DRIVER = 3  # no NVIDIA driver / NVML library, or pynvml missing


def check(probe: GpuProbe) -> tuple[int, list[str]]:
    """Open the probe, read every GPU once; (exit code, report lines)."""
    try:
        gpus = probe.open()
    except DriverNotFoundError as exc:
        return CHECK_NO_DRIVER, [f"no NVIDIA driver: {exc}"]
    except ProbeError as exc:
        return CHECK_FAILED, [f"NVML failed to start: {exc}"]
    code = CHECK_OK
    lines = [f"{len(gpus)} GPU(s)"]
    try:
        for gpu in gpus:
            ok, gpu_lines = _gpu_report(probe, gpu)
            lines.extend(gpu_lines)
            if not ok:
                code = CHECK_FAILED
        events = getattr(probe, "event_types", None)
        if isinstance(events, dict):
            lines.append("NVML events registered: " + (
                ", ".join(f"GPU {i}: 0x{m:x}" for i, m in sorted(events.items())) or "none"))
    finally:
        probe.close()
    return code, lines


def _gpu_report(probe: GpuProbe, gpu: GpuInfo) -> tuple[bool, list[str]]:
    """(read fine, report lines) for one GPU."""
    lines = [f"GPU {gpu.index}: {gpu.name} uuid={gpu.uuid} pci={gpu.pci_bus_id}"]
    try:
        r = probe.read(gpu.index)
    except GpuLostError as exc:
        return False, [*lines, f"  LOST: {exc}"]
    except ProbeError as exc:
        return False, [*lines, f"  FAILED: {exc}"]
    lines.append(_reading_line(r))
    if r.not_supported:
        lines.append(f"  not supported: {', '.join(r.not_supported)}")
    if r.errors:
        lines.append(f"  errors: {'; '.join(r.errors)}")
    return True, lines


def _reading_line(r: GpuReading) -> str:
    reasons = ",".join(decode_clock_reasons(r.clock_reasons)) or "none"
    return (
        f"  temperature={r.temperature_c}C ecc_uncorrected={r.ecc_volatile_uncorrected}"
        f" ecc_corrected={r.ecc_volatile_corrected} retired_dbe={r.retired_pages_dbe}"
        f" retired_pending={r.retired_pages_pending}"
        f" remap_unc={r.remapped_rows_uncorrectable} remap_pending="
        f"{r.remapped_rows_pending} remap_failure={r.remapped_rows_failure}"
        f" clock_reasons={reasons}"
    )

"""The ``gpu.*`` events of one node, built the one way real faults and injected ones share.

``GpuSourceSettings`` says which node the events are about and how the source behaves; the
builders turn an observation (an XID, an ECC reading, thermal reasons, a lost GPU, a recovery)
into its catalog event, with severity and action from the XID table. ``surefoot inject`` uses
the same builders, so an injected fault is exactly the event a real one makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from events._catalog import (
    CRITICAL,
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
from events._probe import GpuInfo, GpuReading
from events._xid import RESET_GPU, SCHEDULE_RESET, classify, rule_for


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

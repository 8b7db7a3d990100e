"""GPU health: the NVML probe (on a pynvml stand-in), the watchdog, kernel-log parsing, the
deduplicating event stream and the source with its health endpoint."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest

import events as ev
from events._gpu import (
    CHECK_FAILED,
    CHECK_NO_DRIVER,
    CHECK_OK,
    GpuEventStream,
    GpuHealthSource,
    GpuSourceSettings,
    check,
    create_health_app,
)
from events._kmsg import _kmsg_record, follow_file, parse_xid_line
from events._nvml import NvmlProbe
from events._probe import GpuInfo, GpuReading, Watchdog, decode_clock_reasons, pci_key
from events._probe_fake import FakeProbe
from tests.events.fake_nvml import FakeNvml


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


SETTINGS = GpuSourceSettings(node="gpu-node-1", dedupe_window_s=2, rate_limit_s=60,
                             escalate_after=3, escalate_window_s=600, clear_after_s=120,
                             temperature_limit_c=90)


# --- NVML probe ---------------------------------------------------------------------------


def test_probe_uses_only_names_pynvml_has() -> None:
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
                 "nvmlDeviceGetPciInfo", "nvmlEventSetCreate", "nvmlEventSetFree",
                 "nvmlDeviceGetSupportedEventTypes", "nvmlDeviceRegisterEvents",
                 "nvmlEventSetWait_v2", "nvmlDeviceGetTemperature", "nvmlDeviceGetTotalEccErrors",
                 "nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus",
                 "nvmlDeviceGetRemappedRows", "nvmlDeviceGetCurrentClocksEventReasons"):
        assert callable(getattr(pynvml, name)), name


def test_nvml_probe_opens_and_reads() -> None:
    fake = FakeNvml(gpus=2)
    fake.values[1].update(temp=93, unc=2, rows=(1, 2, 1, 0), reasons=0x40 | 0x4)
    probe = NvmlProbe(nvml=fake, deadline_s=1)
    gpus = probe.open()
    assert gpus == [GpuInfo(0, "GPU-00000000", "NVIDIA H100 80GB HBM3", "00000000:18:00.0"),
                    GpuInfo(1, "GPU-00000001", "NVIDIA H100 80GB HBM3", "00000000:19:00.0")]
    mask = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
    assert fake.registered == {0: mask, 1: mask}
    r = probe.read(1)
    assert (r.temperature_c, r.ecc_volatile_uncorrected, r.ecc_volatile_corrected) == (93, 2, 3)
    assert (r.remapped_rows_uncorrectable, r.remapped_rows_pending,
            r.remapped_rows_failure) == (2, True, False)
    assert decode_clock_reasons(r.clock_reasons) == ("sw_power_cap", "hw_thermal")
    assert r.not_supported == ()
    assert r.errors == ()
    probe.close()
    assert fake.shutdown


def test_not_supported_calls_leave_fields_empty() -> None:
    fake = FakeNvml(gpus=1)
    fake.not_supported = {"nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus"}
    probe = NvmlProbe(nvml=fake)
    probe.open()
    r = probe.read(0)
    assert r.retired_pages_dbe is None
    assert r.retired_pages_pending is None
    assert r.not_supported == ("nvmlDeviceGetRetiredPages",
                               "nvmlDeviceGetRetiredPagesPendingStatus")
    assert r.temperature_c == 45


def test_gpu_is_lost_becomes_gpu_lost_error() -> None:
    fake = FakeNvml(gpus=2)
    probe = NvmlProbe(nvml=fake)
    probe.open()
    fake.lost.add(1)
    with pytest.raises(ev.GpuLostError) as info:
        probe.read(1)
    assert info.value.gpu == 1
    assert probe.read(0).temperature_c == 45


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
                                  pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_driver(code: int) -> None:
    fake = FakeNvml()
    fake.init_error = code
    with pytest.raises(ev.DriverNotFoundError):
        NvmlProbe(nvml=fake).open()


def test_hung_nvml_call_times_out_instead_of_hanging() -> None:
    fake = FakeNvml(gpus=1)
    probe = NvmlProbe(nvml=fake, deadline_s=0.05)
    probe.open()
    gate = threading.Event()
    fake.hangs["nvmlDeviceGetTemperature"] = gate
    started = time.monotonic()
    with pytest.raises(ev.ProbeTimeoutError):
        probe.read(0)
    assert time.monotonic() - started < 1.0
    del fake.hangs["nvmlDeviceGetTemperature"]
    gate.set()  # the stuck call returns; a fresh worker serves the next call
    assert probe.read(0).temperature_c == 45


def test_watchdog_stops_calling_after_too_many_stuck_calls() -> None:
    dog = Watchdog(0.02, max_stuck=2)
    gate = threading.Event()
    for _ in range(2):
        with pytest.raises(ev.ProbeTimeoutError):
            dog.call("hang", gate.wait)
    assert dog.stuck == 2
    with pytest.raises(ev.ProbeTimeoutError, match="still hung"):
        dog.call("fast", lambda: 1)
    gate.set()
    deadline = time.monotonic() + 2
    while dog.stuck and time.monotonic() < deadline:
        time.sleep(0.005)
    assert dog.call("fast", lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):
        dog.call("error", lambda: 1 / 0)


def test_nvml_events() -> None:
    fake = FakeNvml(gpus=2)
    probe = NvmlProbe(nvml=fake)
    probe.open()
    assert probe.wait_events(10) == []
    fake.events.append((1, pynvml.nvmlEventTypeXidCriticalError, 79))
    fake.events.append((0, pynvml.nvmlEventTypeDoubleBitEccError, 0))
    (xid,) = probe.wait_events(10)
    assert (xid.gpu, xid.kind, xid.xid) == (1, "xid", 79)
    (dbe,) = probe.wait_events(10)
    assert (dbe.gpu, dbe.kind) == (0, "double_bit_ecc")


def test_real_pynvml_without_driver_is_driver_not_found() -> None:
    probe = NvmlProbe()
    try:
        gpus = probe.open()
    except ev.DriverNotFoundError:
        return
    probe.close()
    pytest.skip(f"this machine has an NVIDIA driver ({len(gpus)} GPUs)")


# --- kernel log ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "pci", "xid", "pid", "message"),
    [
        ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.",
         "0000:3b:00", 79, 1234, "GPU has fallen off the bus."),
        ("[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, "
         "GPU has fallen off the bus.", "0000:3b:00", 79, None, "GPU has fallen off the bus."),
        ("Oct 01 13:00:00 host kernel: NVRM: Xid (PCI:0000:06:00): 13, Graphics Exception: "
         "ESR 0x404600=0x80000002", "0000:06:00", 13, None,
         "Graphics Exception: ESR 0x404600=0x80000002"),
        ("NVRM: Xid (0000:18:00): 119, pid=88, name=vllm, Timeout after 6s of waiting for RPC",
         "0000:18:00", 119, 88, "Timeout after 6s of waiting for RPC"),
        ("NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping",
         "0000:10:1c", 63, 1896, "Row Remapper: New row marked for remapping"),
    ],
)
def test_parse_xid_line(line: str, pci: str, xid: int, pid: int | None, message: str) -> None:
    parsed = parse_xid_line(line)
    assert parsed is not None
    assert (parsed.pci, parsed.xid, parsed.pid, parsed.message) == (pci, xid, pid, message)


@pytest.mark.parametrize("line", ["", "NVRM: loading NVIDIA UNIX x86_64 Kernel Module",
                                  "NVRM: Xid (PCI:zzzz): 79, nope", "random text Xid 79"])
def test_non_xid_lines(line: str) -> None:
    assert parse_xid_line(line) is None


def test_kmsg_record_prefix_is_stripped() -> None:
    assert _kmsg_record(b"4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, x\n") == (
        "NVRM: Xid (PCI:0000:3b:00): 79, x")


def test_pci_keys_match_between_nvml_and_kernel() -> None:
    assert pci_key("00000000:3B:00.0") == pci_key("0000:3b:00") == "0000:3b:00"
    assert pci_key("junk") is None
    assert pci_key(None) is None


def test_follow_file(tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    path.write_text("old line\n")
    stop = threading.Event()
    lines = follow_file(stop, str(path), poll_s=0.01)
    with path.open("a") as fh:
        fh.write("NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.\n")
    first = next(lines)
    assert parse_xid_line(first) is not None
    assert "old line" not in first
    stop.set()
    assert list(lines) == []


# --- the stream ---------------------------------------------------------------------------


def stream(clock: Clock, **overrides: Any) -> tuple[GpuEventStream, list[ev.Event]]:
    import dataclasses

    got: list[ev.Event] = []
    s = GpuEventStream(dataclasses.replace(SETTINGS, **overrides), got.append, clock=clock)
    s.set_gpus(FakeProbe(gpus=2).gpus)
    return s, got


def data(event: ev.Event) -> Any:
    return ev.payload_of(event)


def test_xid_79_is_fatal_reboot() -> None:
    s, got = stream(Clock())
    s.xid(79, gpu=s.gpu_by_index(0))
    (e,) = got
    d = data(e)
    assert e.type == "dev.surefoot.gpu.xid"
    assert e.subject == "node/gpu-node-1"
    assert e.source == "/surefoot/sources/gpu/gpu-node-1"
    assert (d.xid, d.severity, d.action, d.fatal, d.gpu) == (79, "fatal", "reboot", True, 0)
    assert d.pci_bus_id == "00000000:3B:00.0"
    assert d.message == "GPU has fallen off the bus"


def test_same_xid_from_both_paths_is_one_event() -> None:
    clock = Clock()
    s, got = stream(clock)
    s.xid(62, gpu=s.gpu_by_index(1))
    clock.advance(0.5)
    assert s.kernel_line("NVRM: Xid (PCI:0000:3c:00): 62, pid=1, name=x, halt") is None
    assert len(got) == 1
    assert s.suppressed == 1
    # a different GPU is a different key
    s.kernel_line("NVRM: Xid (PCI:0000:3b:00): 62, pid=1, name=x, halt")
    assert len(got) == 2
    assert data(got[1]).gpu == 0
    assert data(got[1]).detector == "kernel-log"


def test_kernel_xid_for_unknown_pci_still_reported() -> None:
    s, got = stream(Clock())
    s.kernel_line("NVRM: Xid (PCI:0000:af:00): 79, pid=1, GPU has fallen off the bus.")
    (e,) = got
    assert data(e).gpu is None
    assert data(e).pci_bus_id == "0000:af:00"


def test_repeated_app_xid_is_rate_limited_then_escalated() -> None:
    clock = Clock()
    s, got = stream(clock)
    g = s.gpu_by_index(0)
    s.xid(13, gpu=g)
    clock.advance(10)
    assert s.xid(13, gpu=g) is None  # rate-limited repeat
    clock.advance(10)
    esc = s.xid(13, gpu=g)
    assert esc is not None
    d = data(esc)
    assert (d.action, d.fatal, d.escalated, d.count) == ("reset_gpu", True, True, 3)
    clock.advance(10)
    assert s.xid(13, gpu=g) is None  # already escalated in this window
    assert [data(e).action for e in got] == ["restart_app", "reset_gpu"]


def test_rate_limit_expires() -> None:
    clock = Clock()
    s, got = stream(clock, escalate_after=10)
    g = s.gpu_by_index(0)
    s.xid(31, gpu=g)
    clock.advance(61)
    s.xid(31, gpu=g)
    assert len(got) == 2
    assert data(got[1]).count == 2


def test_burst_within_dedupe_window_counts_once() -> None:
    clock = Clock()
    s, got = stream(clock)
    g = s.gpu_by_index(0)
    for _ in range(5):
        s.xid(13, gpu=g)
        clock.advance(0.1)
    assert len(got) == 1
    assert data(got[0]).count == 1


def test_benign_xids() -> None:
    s, got = stream(Clock())
    s.xid(43, gpu=s.gpu_by_index(0))
    (e,) = got
    assert (data(e).severity, data(e).action, data(e).fatal) == ("info", "ignore", False)
    s2, got2 = stream(Clock(), emit_ignored=False)
    s2.xid(45, gpu=s2.gpu_by_index(0))
    assert got2 == []


def reading(gpu: int = 0, **kw: Any) -> GpuReading:
    base = dict(temperature_c=50, ecc_volatile_uncorrected=0, remapped_rows_pending=False,
                remapped_rows_failure=False, clock_reasons=0)
    base.update(kw)
    return GpuReading(index=gpu, **base)


def test_ecc_is_edge_triggered() -> None:
    clock = Clock()
    s, _got = stream(clock)
    assert s.reading(reading()) == []
    (e,) = s.reading(reading(ecc_volatile_uncorrected=1))
    assert e.type == "dev.surefoot.gpu.ecc"
    assert (data(e).severity, data(e).fatal, data(e).volatile_uncorrected) == ("critical", True, 1)
    assert s.reading(reading(ecc_volatile_uncorrected=1)) == []
    (p,) = s.reading(reading(ecc_volatile_uncorrected=1, remapped_rows_pending=True))
    assert (data(p).severity, data(p).action, data(p).fatal) == ("warning", "schedule_reset",
                                                                 False)
    (f,) = s.reading(reading(ecc_volatile_uncorrected=1, remapped_rows_pending=True,
                             remapped_rows_failure=True))
    assert (data(f).severity, data(f).fatal) == ("fatal", True)


def test_xid_48_decoded_from_ecc_state() -> None:
    s, got = stream(Clock())
    s.reading(reading(remapped_rows_pending=False, remapped_rows_failure=False))
    s.xid(48, gpu=s.gpu_by_index(0))
    assert data(got[-1]).action == "restart_app"
    s2, got2 = stream(Clock())
    s2.reading(reading(remapped_rows_pending=True))
    s2.xid(48, gpu=s2.gpu_by_index(0))
    assert data(got2[-1]).action == "reset_gpu"


def test_thermal_and_temperature() -> None:
    clock = Clock()
    s, _got = stream(clock)
    assert s.reading(reading(clock_reasons=0x4)) == []  # power capping alone is routine
    (e,) = s.reading(reading(clock_reasons=0x40 | 0x4, temperature_c=87))
    d = data(e)
    assert e.type == "dev.surefoot.gpu.thermal"
    assert (d.severity, d.reasons, d.temperature_c) == ("critical", ("hw_thermal",
                                                                     "sw_power_cap"), 87)
    assert s.reading(reading(clock_reasons=0x40)) == []
    (t,) = s.reading(reading(gpu=1, temperature_c=91))
    assert data(t).reasons == ("temperature",)
    assert data(t).severity == "warning"
    assert s.reading(reading(gpu=1, temperature_c=88)) == []  # hysteresis: still hot


def test_healthy_after_problems_go_quiet() -> None:
    clock = Clock()
    s, _got = stream(clock)
    s.reading(reading(clock_reasons=0x20))
    s.xid(13, gpu=s.gpu_by_index(0))
    clock.advance(60)
    assert s.reading(reading()) == []  # cool now, but not for long enough
    clock.advance(61)
    (h,) = s.reading(reading())
    assert h.type == "dev.surefoot.gpu.healthy"
    assert data(h).cleared == ("thermal", "xid:13")
    clock.advance(500)
    assert s.tick() == []


def test_lost_once_then_healthy_when_back() -> None:
    clock = Clock()
    s, _got = stream(clock)
    e = s.lost(1, "GPU is lost")
    assert e is not None
    assert e.type == "dev.surefoot.gpu.lost"
    assert data(e).fatal
    assert s.lost(1, "GPU is lost") is None
    assert s.tick() == []
    clock.advance(10)
    s.reading(reading(gpu=1))
    clock.advance(121)
    (h,) = s.tick()
    assert h.type == "dev.surefoot.gpu.healthy"
    assert data(h).gpu == 1


# --- the source ---------------------------------------------------------------------------


def test_no_driver_source_is_idle_with_health_up() -> None:
    got: list[ev.Event] = []
    src = GpuHealthSource(SETTINGS, FakeProbe(no_driver=True), got.append)
    stop = threading.Event()
    runner = threading.Thread(target=src.run, args=(stop,))
    runner.start()
    try:
        client = create_health_app(src).test_client()
        deadline = time.monotonic() + 5
        while src.state != "idle" and time.monotonic() < deadline:
            time.sleep(0.005)
        resp = client.get("/healthz")
        assert resp.status_code == 200
        assert resp.get_json()["status"] == "idle"
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()
    assert got == []
    assert src.state == "stopped"


def test_idle_health_answers_200() -> None:
    src = GpuHealthSource(SETTINGS, FakeProbe(no_driver=True), lambda e: None)
    src.start()
    resp = create_health_app(src).test_client().get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "idle",
                               "reason": "no NVIDIA driver: NVML Shared Library Not Found"}


def test_poll_once_with_scripted_probe() -> None:
    clock = Clock()
    probe = FakeProbe(gpus=2)
    got: list[ev.Event] = []
    src = GpuHealthSource(SETTINGS, probe, got.append, clock=clock)
    assert src.start()
    assert src.poll_once() == []
    probe.set_reading(0, clock_reasons=0x40)
    probe.fail_next("read", ev.GpuLostError(0))  # GPU 0's read fails: lost
    out = src.poll_once()
    assert [e.type for e in out] == ["dev.surefoot.gpu.lost"]
    out = src.poll_once()
    assert [e.type for e in out] == ["dev.surefoot.gpu.thermal"]
    assert got == [*got[:1], *out]
    status = create_health_app(src).test_client().get("/status").get_json()
    assert status["state"] == "running"
    assert status["emitted"] == 2
    assert status["readings"]["0"]["clock_reasons"] == 0x40


def test_poll_survives_hung_and_failing_reads() -> None:
    fake = FakeNvml(gpus=2)
    probe = NvmlProbe(nvml=fake, deadline_s=0.05)
    got: list[ev.Event] = []
    src = GpuHealthSource(SETTINGS, probe, got.append)
    src.start()
    gate = threading.Event()
    fake.hangs["nvmlDeviceGetTemperature"] = gate
    started = time.monotonic()
    src.poll_once()
    assert time.monotonic() - started < 2
    assert src.errors == 2
    assert got == []
    gate.set()


def test_health_503_when_polling_stalls() -> None:
    clock = Clock()
    src = GpuHealthSource(SETTINGS, FakeProbe(), lambda e: None, clock=clock)
    src.start()
    src.poll_once()
    client = create_health_app(src).test_client()
    assert client.get("/healthz").status_code == 200
    clock.advance(3 * SETTINGS.poll_interval_s + 100)
    assert client.get("/healthz").status_code == 503


def test_nvml_events_reach_the_stream() -> None:
    probe = FakeProbe(gpus=2)
    got: list[ev.Event] = []
    src = GpuHealthSource(SETTINGS, probe, got.append)
    src.start()
    probe.push_xid(1, 119)
    probe.push_dbe(0)
    probe.set_reading(0, ecc_volatile_uncorrected=4)
    src.wait_events_once(0)
    src.wait_events_once(0)
    assert [e.type for e in got] == ["dev.surefoot.gpu.xid", "dev.surefoot.gpu.ecc"]
    assert data(got[0]).action == "reset_gpu"
    assert data(got[0]).gpu == 1


def test_run_loop_with_kernel_log_and_events() -> None:
    probe = FakeProbe(gpus=1)
    got: list[ev.Event] = []
    cond = threading.Condition()

    def emit(e: ev.Event) -> None:
        with cond:
            got.append(e)
            cond.notify_all()

    def kernel(stop: threading.Event) -> Any:
        yield "kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=7, GPU has fallen off the bus."
        stop.wait(5)

    settings = GpuSourceSettings(node="n", poll_interval_s=0.02, event_wait_ms=20)
    src = GpuHealthSource(settings, probe, emit, kernel_lines=kernel)
    stop = threading.Event()
    runner = threading.Thread(target=src.run, args=(stop,))
    runner.start()
    try:
        with cond:
            assert cond.wait_for(lambda: len(got) >= 1, timeout=5)
        probe.push_xid(0, 94)
        with cond:
            assert cond.wait_for(lambda: len(got) >= 2, timeout=5)
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()
    assert probe.closed
    assert [(data(e).xid, data(e).detector) for e in got] == [(79, "kernel-log"), (94, "nvml")]


def test_check_exit_codes() -> None:
    assert check(FakeProbe(no_driver=True))[0] == CHECK_NO_DRIVER
    code, lines = check(FakeProbe(gpus=2))
    assert code == CHECK_OK
    assert lines[0] == "2 GPU(s)"
    probe = FakeProbe(gpus=1)
    probe.fail_next("read", ev.GpuLostError(0))
    code, lines = check(probe)
    assert code == CHECK_FAILED
    assert any("LOST" in line for line in lines)
    fake = FakeNvml(gpus=1)
    fake.not_supported = {"nvmlDeviceGetRemappedRows"}
    code, lines = check(NvmlProbe(nvml=fake))
    assert code == CHECK_OK
    assert "  not supported: nvmlDeviceGetRemappedRows" in lines


def test_kmsg_reader_yields_records_and_stops() -> None:
    from events._kmsg import _kmsg_lines

    r, w = os.pipe()
    stop = threading.Event()
    lines = _kmsg_lines(r, stop, 0.01)
    os.write(
        w, b"3,77,123456,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=5, GPU has fallen off the bus.\n"
    )
    line = next(lines)
    parsed = parse_xid_line(line)
    assert parsed is not None
    assert parsed.xid == 79
    assert parsed.pid == 5
    stop.set()
    assert list(lines) == []
    os.close(w)


def test_kernel_log_source_selection(tmp_path: Path) -> None:
    from events._kmsg import kernel_log_source

    assert kernel_log_source("off") is None
    assert kernel_log_source(None) is None
    path = tmp_path / "kern.log"
    path.write_text("")
    src = kernel_log_source(str(path))
    assert src is not None
    stop = threading.Event()
    stop.set()
    assert list(src(stop)) == []


def test_publisher_sends_in_background_and_drops_when_full() -> None:
    import httpx

    seen: list[str] = []
    gate = threading.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        gate.wait(5)
        seen.append(request.headers["ce-id"])
        return httpx.Response(202)

    sender = ev.Sender(transport=httpx.MockTransport(handle))
    pub = ev.Publisher(sender, "http://sink.test/", max_queue=2)
    events = [ev.build(ev.NodeReady(node="n"), source="/s", id=f"e{i}") for i in range(6)]
    for e in events:
        pub(e)  # never blocks the caller
    assert pub.dropped >= 1
    gate.set()
    pub.close()
    assert pub.sent == len(seen) == 6 - pub.dropped
    assert seen[0] == "e0"

"""``surefoot inject``, ``surefoot source gpu`` and ``surefoot broker``: malformed input, and
injected faults arriving at a subscriber as CloudEvents."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import events as ev
from surefoot.cli import main

ROOT = Path(__file__).resolve().parents[2]


class Sink:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.cond = threading.Condition()

        def handler(event: ev.Event) -> None:
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

        self.server = ev.HttpServer(ev.create_app(ev.ReceiverSettings(), handler)).start()
        self.url = self.server.url + "/"

    def wait(self, n: int, timeout: float = 10) -> list[ev.Event]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout=timeout)
            return list(self.events)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.server.stop()


@pytest.fixture(autouse=True)
def no_env_sink(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SUREFOOT_BROKER_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no `surefoot up` state


def test_inject_without_sink_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inject", "gpu-xid", "--node", "n1", "--xid", "79"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["surefoot inject: no event sink: pass --sink URL, set SUREFOOT_BROKER_URL, "
                   "or start `surefoot up`"]


def test_inject_finds_the_broker_of_a_running_up(sink: Sink, tmp_path: Path) -> None:
    import dataclasses

    from surefoot._up import RunState, default_state_dir

    values: dict[str, Any] = {f.name: "" for f in dataclasses.fields(RunState)
                              if f.default is dataclasses.MISSING
                              and f.default_factory is dataclasses.MISSING}
    values.update(pid=os.getpid(), broker_url=sink.url)
    RunState(**values).write(default_state_dir(os.environ))
    assert main(["inject", "gpu-lost", "--node", "n1"]) == 0
    (event,) = sink.wait(1)
    assert event.type == "dev.surefoot.gpu.lost"


@pytest.mark.parametrize("argv", [
    ["inject", "gpu-xid", "--node", "n1", "--xid", "-3", "--sink", "http://127.0.0.1:9/"],
    ["inject", "gpu-xid", "--node", "n1", "--xid", "79", "--gpu", "-1",
     "--sink", "http://127.0.0.1:9/"],
    ["inject", "gpu-thermal", "--node", "n1", "--reason", "cosmic", "--sink", "http://x:9/"],
    ["inject", "gpu-lost", "--node", "n1", "--sink", "ftp://x/"],
])
def test_inject_bad_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("surefoot inject: ")


def test_inject_missing_required_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inject", "gpu-xid", "--node", "n1"])
    assert info.value.code == 2
    assert "--xid" in capsys.readouterr().err


def test_inject_unreachable_sink_exits_1(free_port: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inject", "gpu-lost", "--node", "n1",
                 "--sink", f"http://127.0.0.1:{free_port}/"]) == 1
    assert "not delivered" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "etype", "check"), [
    (["gpu-xid", "--xid", "79"], "dev.surefoot.gpu.xid",
     {"xid": 79, "action": "reboot", "fatal": True, "severity": "fatal"}),
    (["gpu-xid", "--xid", "43"], "dev.surefoot.gpu.xid", {"action": "ignore", "fatal": False}),
    (["gpu-xid", "--xid", "13", "--repeats", "3"], "dev.surefoot.gpu.xid",
     {"action": "reset_gpu", "escalated": True}),
    (["gpu-ecc", "--uncorrected", "2"], "dev.surefoot.gpu.ecc",
     {"volatile_uncorrected": 2, "fatal": True}),
    (["gpu-thermal", "--temperature", "97"], "dev.surefoot.gpu.thermal",
     {"temperature_c": 97, "reasons": ("hw_thermal",), "severity": "critical"}),
    (["gpu-lost"], "dev.surefoot.gpu.lost", {"fatal": True, "action": "reboot"}),
])
def test_injected_faults_arrive_as_cloudevents(sink: Sink, argv: list[str], etype: str,
                                               check: dict[str, Any]) -> None:
    fault, *rest = argv
    assert main(["inject", fault, "--node", "gpu-node-2", "--gpu", "1", *rest,
                 "--sink", sink.url]) == 0
    (event,) = sink.wait(1)
    assert event.type == etype
    assert event.subject == "node/gpu-node-2"
    assert event.source == "/surefoot/sources/gpu/gpu-node-2"
    payload = ev.payload_of(event)
    assert payload.gpu == 1
    assert payload.detector == "inject"
    for k, v in check.items():
        assert getattr(payload, k) == v


def test_injected_xid_equals_what_the_source_emits() -> None:
    import argparse

    from surefoot._cmd_events import build_injected_event

    args = argparse.Namespace(fault="gpu-xid", node="n1", gpu=0, uuid="GPU-fake-0",
                              pci="00000000:3B:00.0", xid=79, message="", repeats=1)
    injected = ev.payload_of(build_injected_event(args))
    got: list[ev.Event] = []
    stream = ev.GpuEventStream(ev.GpuSourceSettings(node="n1"), got.append)
    stream.set_gpus(ev.FakeProbe(gpus=1).gpus)
    stream.xid(79, gpu=stream.gpu_by_index(0))
    real = ev.payload_of(got[0])
    assert injected == real.__class__(**{**real.to_dict(), "detector": "inject"})


def test_source_gpu_check_without_driver_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        ev.NvmlProbe().open()
        pytest.skip("this machine has an NVIDIA driver")
    except ev.DriverNotFoundError:
        pass
    assert main(["source", "gpu", "--check"]) == 3
    assert capsys.readouterr().err.strip().startswith("no NVIDIA driver")


def test_source_gpu_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source", "gpu", "--poll-interval", "0"]) == 2
    assert main(["source", "gpu"]) == 2
    assert "no event sink" in capsys.readouterr().err
    assert main(["source", "gpu", "--sink", "http://127.0.0.1:9/",
                 "--kernel-log", "/nonexistent/kern.log"]) == 2


def test_source_gpu_port_taken_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["source", "gpu", "--sink", "http://127.0.0.1:9/", "--kernel-log", "off",
                     "--health-host", "127.0.0.1", "--health-port", str(port)]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_broker_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("triggers:\n  - subscriber: nope\n    filters: [{cesql: x}]\n")
    assert main(["broker", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "triggers[0].name" in err[0]
    assert "triggers[0].subscriber" in err[0]
    assert "triggers[0].filters[0].cesql" in err[0]
    assert main(["broker", "--config", str(tmp_path / "missing.yaml")]) == 2


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # XDG_CACHE_HOME: the test's, no `up` state
    env.pop("SUREFOOT_BROKER_URL", None)
    return subprocess.Popen([sys.executable, "-m", "surefoot", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()))  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    assert result, f"no output; stderr: {proc.stderr.read() if proc.poll() else ''}"
    assert result[0], f"no output; stderr: {proc.stderr.read() if proc.poll() else ''}"
    return result[0]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_broker_process_fans_out_injected_fault(tmp_path: Path, sink: Sink,
                                                free_port: int) -> None:
    cfg = tmp_path / "triggers.yaml"
    cfg.write_text(
        "triggers:\n  - name: gpu\n"
        f"    subscriber: {sink.url}\n"
        "    filters: [{prefix: {type: dev.surefoot.gpu.}}]\n"
    )
    proc = _spawn(["broker", "--port", str(free_port), "--config", str(cfg)])
    try:
        line = _first_line(proc)
        assert f"broker on http://127.0.0.1:{free_port} with 1 trigger(s)" in line
        assert main(["inject", "gpu-xid", "--node", "n7", "--xid", "79",
                     "--sink", f"http://127.0.0.1:{free_port}/"]) == 0
        (event,) = sink.wait(1)
        assert event.type == "dev.surefoot.gpu.xid"
        assert event.subject == "node/n7"
    finally:
        assert _stop(proc) == 0


def test_gpu_source_process_without_driver_stays_idle_and_healthy(free_port: int) -> None:
    try:
        ev.NvmlProbe().open()
        pytest.skip("this machine has an NVIDIA driver")
    except ev.DriverNotFoundError:
        pass
    proc = _spawn(["source", "gpu", "--node", "n1", "--sink", "http://127.0.0.1:9/",
                   "--kernel-log", "off", "--health-host", "127.0.0.1",
                   "--health-port", str(free_port)])
    try:
        line = _first_line(proc)
        assert "idle" in line
        assert "no NVIDIA driver" in line
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{free_port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert resp.status_code == 200
        assert resp.json()["status"] == "idle"
    finally:
        assert _stop(proc) == 0
    assert proc.stderr is not None
    warnings = [x for x in proc.stderr.read().splitlines() if "idle" in x]
    assert len(warnings) == 1  # one clear log line


def test_source_pods_bad_kubeconfig_exits_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    assert main(["source", "pods", "--sink", "http://127.0.0.1:9/",
                 "--kubeconfig", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "kubeconfig" in err[0]
    assert main(["source", "pods", "--sink", "http://127.0.0.1:9/",
                 "--sweep-interval", "-1"]) == 2


def test_source_pods_process_reports_deleted_pod(tmp_path: Path, sink: Sink,
                                                 free_port: int) -> None:
    from tests.kube_fake import FakeKubeServer

    with FakeKubeServer() as kube:
        kube.add_node("gpu-1")
        kube.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
        cfg = kube.write_kubeconfig(tmp_path / "kubeconfig")
        proc = _spawn(["source", "pods", "--kubeconfig", cfg, "--namespace", "default",
                       "--selector", "app=llm", "--sink", sink.url, "--health-host",
                       "127.0.0.1", "--health-port", str(free_port)])
        try:
            assert "pod source watching default" in _first_line(proc)
            deadline = time.monotonic() + 15
            while True:  # healthy = listed and watching
                try:
                    if httpx.get(f"http://127.0.0.1:{free_port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.05)
            kube.delete_pod("llm-a")
            (event,) = sink.wait(1)
            assert event.type == "dev.surefoot.pod.deleted"
            assert event.subject == "pod/default/llm-a"
        finally:
            assert _stop(proc) == 0

"""``surefoot up`` and the commands that act on it (``status``, ``kill``, ``evict``): bad input
gets one line and exit 2; Ctrl-C and SIGTERM leave no process behind; the whole system answers
an OpenAI client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import HttpServer
from knative.platforms import Target
from knative.platforms.local import LocalPlatform, LocalSettings, RevisionSpec, create_control_app
from surefoot._up import RunState
from surefoot.cli import main

SMALL = ("--embedding-model", "", "--n-ctx", "512", "--max-tokens", "64", "--grace-seconds", "1")
MARK = "SUREFOOT_TEST_RUN"  # every process `surefoot up` starts inherits it


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- processes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int = field(compare=False)
    start: str  # clock ticks since boot: tells a reused pid apart
    cmdline: str = field(compare=False)


def proc_table() -> dict[int, Proc]:
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie holds nothing; its parent reaps it
            continue
        table[int(d.name)] = Proc(int(d.name), int(fields[1]), fields[19], cmdline)
    return table


def descendants(root: int, table: dict[int, Proc]) -> set[Proc]:
    found: set[Proc] = set()
    frontier = {root}
    while frontier:
        children = {p for p in table.values() if p.ppid in frontier and p not in found}
        found |= children
        frontier = {p.pid for p in children}
    return found


def marked(marker: str) -> list[Proc]:
    """Live processes that carry ``marker`` in their environment."""
    out = []
    for p in proc_table().values():
        try:
            env = Path(f"/proc/{p.pid}/environ").read_bytes()
        except OSError:
            continue
        if f"{MARK}={marker}".encode() in env:
            out.append(p)
    return out


class Up:
    """``surefoot up`` as a child process, with every process it started tracked."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        self.state_dir = tmp_path / "run"
        self.out = tmp_path / "up.out"
        self.err = tmp_path / "up.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "surefoot", "up", "--no-embeddings",
                 "--state-dir", str(self.state_dir), "--checkpoint-interval", "0",
                 "--grace-seconds", "3", *args],
                stdout=out, stderr=err, env={**os.environ, MARK: self.marker})
        self.seen: set[Proc] = set()

    def track(self) -> None:
        now = descendants(self.proc.pid, proc_table())
        self.seen = (self.seen - now) | now  # the newest command line (after exec) wins

    def wait_tracking(self, pred: Callable[[], Any], timeout: float, what: str,
                      every: float = 0.05) -> Any:
        def check() -> Any:
            self.track()
            if self.proc.poll() is not None:
                raise AssertionError(f"surefoot up exited with {self.proc.returncode}: "
                                     f"{self.err.read_text()[-2000:]}")
            return pred()
        return wait_for(check, timeout, what, every)

    def started(self, word: str) -> bool:
        return any(word in p.cmdline for p in self.seen)

    def leftovers(self) -> list[Proc]:
        now = proc_table()
        left = {p for p in self.seen if now.get(p.pid) == p}
        left |= set(marked(self.marker))
        left |= {p for p in now.values() if str(self.state_dir) in p.cmdline}
        return sorted(left, key=lambda p: p.pid)

    def kill_all(self) -> None:
        for p in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:  # a failed test must not leave the system running
        up.kill_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- status, kill, evict against a running control API -------------------------------------

@pytest.fixture
def running(tmp_path: Path, redis_url: str) -> Iterator[tuple[LocalPlatform, Path]]:
    """A local platform and its control API, announced by a state file as `surefoot up` does:
    three replicas of one revision on two nodes, so one stays Pending."""
    p = LocalPlatform(
        LocalSettings(nodes=2, log_dir=str(tmp_path / "logs"), grace_seconds=3,
                      base_env=os.environ),
        [RevisionSpec("sf-primary", "sf", "primary", 3, 4, SMALL),
         RevisionSpec("sf-fallback", "sf", "fallback", 0, 1, SMALL)],
        {"sf": [Target("sf-primary", 100, "primary"), Target("sf-fallback", 0, "fallback")]},
    ).start()
    control = HttpServer(create_control_app(p)).start()
    state_dir = tmp_path / "run"
    RunState(pid=os.getpid(), service="sf", gateway_url="http://127.0.0.1:9",
             control_url=control.url, broker_url="", functions_url="", redis_url=redis_url,
             checkpoint_dir=str(tmp_path / "checkpoints"), log_dir=str(tmp_path / "logs"),
             admin_token="t", primary_revision="sf-primary",
             fallback_revision="sf-fallback").write(state_dir)
    try:
        yield p, state_dir
    finally:
        control.stop()
        p.stop(timeout=3)


def test_standby_count_through_the_control_api(running: tuple[LocalPlatform, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    p, state_dir = running
    assert main(["standby", "5", "--state-dir", str(state_dir)]) == 2
    assert "standby 5: must be within 0..4" in one_line(capsys.readouterr().err)
    # this platform has no internal token to give standbys: the platform's own refusal
    assert main(["standby", "1", "--state-dir", str(state_dir)]) == 1
    assert "internal token" in one_line(capsys.readouterr().err)
    assert main(["standby", "0", "--state-dir", str(state_dir)]) == 0
    assert capsys.readouterr().out.strip() == "standbys per revision: 0"
    assert p.status()["standby"] == []
    control = RunState.read(state_dir).control_url
    for body, words in (({"count": "two"}, "count: must be an integer"),
                        ({"count": True}, "count: must be an integer"),
                        ({}, "count: must be an integer"),
                        ({"count": -1}, "standby: must be 0 or more")):
        r = httpx.put(f"{control}/v1/standby", json=body, timeout=5)
        assert r.status_code == 422, (body, r.text)
        assert words in r.json()["error"]


def test_kill_and_evict_of_unknown_names(running: tuple[LocalPlatform, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    p, state_dir = running
    names = sorted(r.name for r in p.replicas("sf"))
    assert main(["kill", "sf-primary-nope", "--state-dir", str(state_dir)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("surefoot kill: no replica named 'sf-primary-nope'")
    assert all(n in line for n in names)

    assert main(["evict", "node-7", "--state-dir", str(state_dir)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("surefoot evict: ")
    assert "'node-7'" in line
    assert "node-1, node-2" in line
    for bad in ("-1", "nan", "inf"):
        assert main(["evict", "node-1", "--timeout", bad, "--state-dir", str(state_dir)]) == 2
        assert "--timeout" in one_line(capsys.readouterr().err)
    assert not any(n.unschedulable for n in p.nodes())  # nothing was touched
    assert sorted(r.name for r in p.replicas("sf")) == names

    # The real names work: kill replaces the replica; evict cordons and drains the node.
    victim = next(r for r in p.replicas("sf") if r.node == "node-1")
    assert main(["kill", victim.name, "--state-dir", str(state_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {victim.name}"
    assert victim.name not in {r.name for r in p.replicas("sf") if r.phase != "Terminating"}
    assert main(["evict", "node-2", "--timeout", "10", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node node-2 cordoned; evicted: ")
    assert [n.unschedulable for n in p.nodes()] == [False, True]


def test_status_text_and_json(running: tuple[LocalPlatform, Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    p, state_dir = running
    assert main(["status", "--state-dir", str(state_dir)]) == 0
    text = capsys.readouterr().out
    pending = [r.name for r in p.replicas("sf") if r.phase == "Pending"]
    assert len(pending) == 1
    assert f"pending (no node satisfies anti-affinity): {pending[0]}" in text
    assert "traffic: sf-primary=100% (primary), sf-fallback=0% (fallback)" in text
    assert "breakers: none open" in text
    assert "latest checkpoint: none" in text

    assert main(["status", "--json", "--state-dir", str(state_dir)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert set(st) == {"service", "replicas", "traffic", "nodes", "breakers",
                       "latest_checkpoint", "pending", "capacity", "cordoned", "dead_letters",
                       "standby"}
    assert st["service"] == "sf"
    assert st["breakers"] == []
    assert st["latest_checkpoint"] is None
    assert len(st["replicas"]) == 3
    for r in st["replicas"]:
        assert set(r) == {"name", "node", "revision", "url", "ready", "phase", "pid"}
        assert r["revision"] == "sf-primary"
        assert isinstance(r["ready"], bool)
    by_phase = sorted((r["phase"], r["node"]) for r in st["replicas"])
    assert by_phase == [("Pending", None), ("Running", "node-1"), ("Running", "node-2")]
    assert st["traffic"] == [{"revision": "sf-primary", "percent": 100, "tag": "primary"},
                             {"revision": "sf-fallback", "percent": 0, "tag": "fallback"}]
    assert [n["name"] for n in st["nodes"]] == ["node-1", "node-2"]
    assert set(st["nodes"][0]) == {"name", "ready", "unschedulable", "labels"}


def test_commands_without_a_running_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "none"
    for argv in (["status"], ["status", "--json"], ["kill", "x"], ["evict", "node-1"]):
        assert main([*argv, "--state-dir", str(empty)]) == 2
        line = one_line(capsys.readouterr().err)
        assert "no running `surefoot up` found" in line
        assert str(empty) in line

    stale = tmp_path / "stale"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RunState(pid=dead.pid, service="sf", gateway_url="", control_url="http://127.0.0.1:9",
             broker_url="", functions_url="", redis_url="", checkpoint_dir="", log_dir="",
             admin_token="", primary_revision="a", fallback_revision="b").write(stale)
    assert main(["status", "--state-dir", str(stale)]) == 2
    assert "no longer running" in one_line(capsys.readouterr().err)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "state.json").write_text("{not json")
    assert main(["kill", "x", "--state-dir", str(garbage)]) == 2
    assert "not a state file" in one_line(capsys.readouterr().err)

    # A live `surefoot up` whose control API does not answer: the operation failed (1).
    gone = tmp_path / "gone"
    RunState(pid=os.getpid(), service="sf", gateway_url="",
             control_url=f"http://127.0.0.1:{free_port()}", broker_url="", functions_url="",
             redis_url="", checkpoint_dir="", log_dir="", admin_token="",
             primary_revision="a", fallback_revision="b").write(gone)
    assert main(["status", "--state-dir", str(gone)]) == 1
    assert "unreachable" in one_line(capsys.readouterr().err)


def test_up_rejects_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, word in ((["--port", "0"], "--port"), (["--port", "70000"], "--port"),
                       (["--nodes", "0"], "--nodes"), (["--replicas", "0"], "--replicas"),
                       (["--gateways", "0"], "--gateways"), (["--standby", "-1"], "--standby")):
        assert main(["up", "--state-dir", str(tmp_path), *argv]) == 2
        assert word in one_line(capsys.readouterr().err)
    assert not (tmp_path / "state.json").exists()


# --- surefoot up as a process ----------------------------------------------------------------

def test_up_on_a_taken_port(tmp_path: Path, ups: list[Up]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = Up(tmp_path, "--port", str(port))
        ups.append(up)
        up.proc.wait(30)
        up.track()
    assert up.proc.returncode == 2
    line = one_line(up.err.read_text())
    assert line == (f"surefoot up: port {port} on 127.0.0.1 is already in use: pass --port "
                    "with a free port")
    assert up.leftovers() == []
    assert not (up.state_dir / "state.json").exists()


@pytest.mark.parametrize("moment", ["redis", "replicas", "loading"])
def test_ctrl_c_during_start_up_leaves_no_process(tmp_path: Path, ups: list[Up],
                                                  moment: str) -> None:
    """SIGINT as soon as Redis starts, as soon as the first replica is launched (the others
    are being launched), or while the replicas load the model."""
    up = Up(tmp_path, "--port", str(free_port()))
    ups.append(up)
    if moment == "redis":
        up.wait_tracking(lambda: up.started("redis-server"), 30, "redis", every=0.001)
    elif moment == "replicas":
        up.wait_tracking(lambda: up.started(" serve "), 30, "a replica", every=0.001)
    else:
        up.wait_tracking(lambda: (up.state_dir / "state.json").exists(), 30, "the state file")
        assert len([p for p in up.seen if " serve " in p.cmdline]) >= 4
    up.proc.send_signal(signal.SIGINT)
    try:
        up.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("surefoot up did not exit after Ctrl-C") from None
    err = up.err.read_text()
    assert up.proc.returncode in (0, 130), err
    assert "Traceback" not in err
    assert up.leftovers() == [], err
    assert not (up.state_dir / "state.json").exists()


def test_up_answers_through_the_gateway_and_stops_cleanly(
        tmp_path: Path, ups: list[Up], capsys: pytest.CaptureFixture[str]) -> None:
    from openai import OpenAI

    port = free_port()
    up = Up(tmp_path, "--port", str(port))
    ups.append(up)
    up.wait_tracking(lambda: "Ctrl-C stops everything." in up.out.read_text(), 120,
                     "surefoot up to be ready")
    out = up.out.read_text()
    assert f"gateway (OpenAI API)  http://127.0.0.1:{port}/v1" in out
    assert "not every replica is ready" not in out
    kinds = [p.cmdline for p in up.seen]
    assert sum(" serve " in c for c in kinds) >= 4
    assert any(" gateway " in c for c in kinds)

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60,
                    max_retries=0)
    (model,) = [m.id for m in client.models.list().data]
    done = client.completions.create(model=model, prompt="The capital of France is",
                                     max_tokens=4)
    assert done.choices[0].text
    assert done.usage
    assert done.usage.completion_tokens >= 1

    assert main(["status", "--json", "--state-dir", str(up.state_dir)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert sorted(r["revision"] for r in st["replicas"]) == [
        "surefoot-fallback", "surefoot-primary", "surefoot-primary", "surefoot-primary"]
    assert all(r["ready"] and r["pid"] and r["url"] for r in st["replicas"])
    assert len({r["node"] for r in st["replicas"] if r["revision"] == "surefoot-primary"}) == 3

    up.track()
    up.proc.send_signal(signal.SIGTERM)
    up.proc.wait(30)
    err = up.err.read_text()
    assert up.proc.returncode == 0, err
    assert "stopped." in err
    assert "Traceback" not in err
    assert up.leftovers() == []
    assert not (up.state_dir / "state.json").exists()


def test_replicas_sharing_the_cores_run_the_single_sequence_engine(tmp_path: Path) -> None:
    # the slots `surefoot up` gives its replicas: 1 when they share the cores one thread each,
    # else the engine's default; the setting, then the environment, say otherwise
    from surefoot._up import LocalSystem, UpSettings

    def slots(env: dict[str, str], **kw: Any) -> str | None:
        system = LocalSystem(UpSettings(state_dir=str(tmp_path), **kw), env)
        return system._slots_env().get("SUREFOOT_SLOTS")

    cores = os.cpu_count() or 1
    assert slots({}, replica_threads=1) == "1"
    assert slots({}, replica_threads=4) is None
    assert slots({}) == ("1" if cores // 4 < 2 else None)  # 3 primaries and a fallback
    assert slots({"SUREFOOT_SLOTS": "2"}, replica_threads=1) is None  # theirs, inherited
    assert slots({"SUREFOOT_SLOTS": "2"}, replica_slots=3) == "3"

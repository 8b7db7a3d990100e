"""State that survives under ``surefoot up``: Redis and the gateway are restarted with backoff,
Redis keeps an append-only file, the operator's forced breakers have a durable copy written
back into an empty Redis before anyone reads it; and the operator's CLI for the breakers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from knative.breakers import BreakerRegistrySettings, BreakerStore, EmbeddedRedis
from surefoot._up_durable import file_breakers
from surefoot._up_supervise import BACKOFF, RUNNING, Supervised, prune_replica_logs
from tests.surefoot.test_up import Up, free_port, one_line, ups, wait_for

__all__ = ["ups"]  # the fixture, shared with test_up

# --- the supervisor, on a fake child and a fake clock --------------------------------------


class FakeChild:
    def __init__(self) -> None:
        self.code: int | None = None
        self.launches = 0
        self.fail = False

    @property
    def pid(self) -> int | None:
        return 100 + self.launches

    def launch(self) -> None:
        if self.fail:
            raise RuntimeError("port taken")
        self.launches += 1
        self.code = None

    def exited(self) -> int | None:
        return self.code


def test_supervised_restarts_with_backoff_that_resets() -> None:
    now = [0.0]
    child = FakeChild()
    sup = Supervised("redis", child, backoff=0.5, backoff_max=2.0, reset_after=10.0,
                     clock=lambda: now[0])
    waits = []
    for _ in range(4):
        child.code = -9
        sup.step()
        assert sup.phase == BACKOFF
        waits.append(sup.restart_at - now[0])
        sup.step()  # not yet
        assert sup.phase == BACKOFF
        now[0] = sup.restart_at
        sup.step()
        assert sup.phase == RUNNING
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert sup.restarts == 4
    assert sup.status() == {"name": "redis", "phase": RUNNING, "pid": 104, "restarts": 4,
                            "last_exit": -9, "last_error": "exited with -9"}
    now[0] += 10.0  # ran long enough: the next crash waits the first backoff again
    sup.step()
    child.code = 1
    sup.step()
    assert sup.restart_at - now[0] == 0.5


def test_a_failed_restart_is_one_more_crash() -> None:
    now = [0.0]
    child = FakeChild()
    sup = Supervised("gateway", child, backoff=1.0, clock=lambda: now[0])
    child.code = 1
    sup.step()
    child.fail = True
    now[0] = sup.restart_at
    sup.step()
    assert sup.phase == BACKOFF
    assert sup.restart_at == now[0] + 2.0
    assert "could not start: port taken" in sup.status()["last_error"]


def test_replica_logs_kept_per_revision(tmp_path: Path) -> None:
    for i in range(6):
        for rev in ("sf-primary", "sf-fallback"):
            f = tmp_path / f"{rev}-{i:06x}.log"
            f.write_text("x")
            os.utime(f, (1000 + i, 1000 + i))
    (tmp_path / "gateway.log").write_text("x")
    removed = prune_replica_logs(tmp_path, ["sf-primary", "sf-fallback"],
                                 live={"sf-primary-000000"}, keep=2)
    assert len(removed) == 7
    left = sorted(f.name for f in tmp_path.iterdir())
    assert left == ["gateway.log", "sf-fallback-000004.log", "sf-fallback-000005.log",
                    "sf-primary-000000.log", "sf-primary-000004.log", "sf-primary-000005.log"]


# --- persistence and the durable copy, on real Redis servers ----------------------------------


def test_redis_sigkill_keeps_breaker_states(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=str(tmp_path / "redis"), persist=True).start()
    try:
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=server.url,
                                                              redis_timeout=5.0))
        store.force_open("revision:sf-primary", "bad rollout")
        store.open("node:node-2", "xid 79")
        server.kill()
        assert server.reap() == -signal.SIGKILL
        server.start()
        assert store.status("revision:sf-primary").state == "forced_open"
        assert store.status("node:node-2").state == "open"
        assert store.status("node:node-2").reason == "xid 79"
    finally:
        server.stop()


def test_forced_states_come_back_into_an_empty_redis(tmp_path: Path, redis_url: str) -> None:
    settings = BreakerRegistrySettings(redis_url=redis_url, redis_timeout=5.0)  # a busy machine
    keeper = file_breakers(tmp_path / "forced.json", settings)
    store = BreakerStore.from_url(settings)
    keeper.sync()  # marks this Redis as holding what was written
    store.force_open("revision:sf-primary", "bad rollout")
    store.force_closed("node:node-1", "known good")
    store.open("replica:r-1", "5xx")  # not the operator's: not kept
    keeper.sync()
    kept = json.loads((tmp_path / "forced.json").read_text())["breakers"]
    assert kept == {"node:node-1": {"state": "forced_closed", "reason": "known good"},
                    "revision:sf-primary": {"state": "forced_open", "reason": "bad rollout"}}
    redis.Redis.from_url(redis_url).flushall()  # Redis replaced by an empty one
    keeper.sync()  # an empty Redis is never copied over the file: it is restored
    assert store.status("revision:sf-primary").state == "forced_open"
    assert store.status("node:node-1").state == "forced_closed"
    assert keeper.restored == 2
    store.reset("node:node-1")  # the operator's reset is kept too
    keeper.sync()
    assert list(keeper.read()) == ["revision:sf-primary"]
    keeper.close()


def test_embedded_redis_lets_no_client_in_before_the_restore(tmp_path: Path) -> None:
    settings0 = BreakerRegistrySettings(redis_url="redis://127.0.0.1:1/0")
    path = tmp_path / "forced.json"
    file_breakers(path, settings0).write(
        {"revision:sf-primary": {"state": "forced_open", "reason": "bad rollout"}})
    seen: list[Any] = []
    server = EmbeddedRedis(data_dir=str(tmp_path / "redis"), persist=True)
    keeper = file_breakers(path, BreakerRegistrySettings(redis_url=server.url,
                                                           redis_timeout=5.0))

    def prepare(client: redis.Redis) -> None:
        try:  # another client, now: refused
            redis.Redis.from_url(server.url).ping()
            seen.append("answered")
        except redis.AuthenticationError as exc:
            seen.append(type(exc).__name__)
        keeper.restore(client)

    server.prepare = prepare
    server.start()
    try:
        assert seen == ["AuthenticationError"]
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=server.url,
                                                              redis_timeout=5.0))
        assert store.status("revision:sf-primary").state == "forced_open"
    finally:
        server.stop()


# --- the whole system: real processes ------------------------------------------------------


def _status(state_dir: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "surefoot", "status", "--json", "--state-dir",
                          str(state_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _component(state_dir: Path, name: str) -> dict[str, Any]:
    (c,) = [c for c in _status(state_dir)["components"] if c["name"] == name]
    return c


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "surefoot", *args], capture_output=True,
                          text=True, timeout=60)


def _answers(url: str) -> bool:
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                       timeout=30)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def test_redis_and_gateway_killed_under_up_come_back(tmp_path: Path, ups: list[Up]) -> None:
    port = free_port()
    up = Up(tmp_path, "--port", str(port), "--replicas", "1", "--nodes", "2")
    ups.append(up)
    up.wait_tracking(lambda: "Ctrl-C stops everything." in up.out.read_text(), 180,
                     "surefoot up to be ready")
    sd = up.state_dir
    url = f"http://127.0.0.1:{port}"
    sd_args = ("--state-dir", str(sd))

    wrong = _cli("breakers", "force-open", "--revision", "surefoot", *sd_args)
    assert wrong.returncode == 2
    assert one_line(wrong.stderr) == (
        "surefoot breakers: no revision named 'surefoot' (valid revision names: "
        "surefoot-fallback, surefoot-primary); --create to create its breaker anyway")
    done = _cli("breakers", "force-open", "--revision", "surefoot-primary", "--reason",
                "bad rollout", *sd_args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "revision:surefoot-primary: forced_open"
    wait_for(lambda: "revision:surefoot-primary" in (sd / "forced.json").read_text()
             if (sd / "forced.json").exists() else False, 10, "the durable copy")

    redis_pid = _component(sd, "redis")["pid"]
    os.kill(redis_pid, signal.SIGKILL)
    wait_for(lambda: (c := _component(sd, "redis"))["restarts"] == 1 and c["phase"] == "Running",
             30, "redis to be restarted", every=0.2)
    listed = json.loads(_cli("breakers", "--json", *sd_args).stdout)
    states = {b["key"]: b["state"] for b in listed["breakers"]}
    assert states["revision:surefoot-primary"] == "forced_open"
    assert listed["stale"] is False
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "surefoot-fallback"

    gateway_pid = _component(sd, "gateway")["pid"]
    second_pid = _component(sd, "gateway-2")["pid"]  # on the same port
    os.kill(gateway_pid, signal.SIGKILL)
    wait_for(lambda: _answers(url), 60, "the gateway to answer again", every=0.1)
    wait_for(lambda: _component(sd, "gateway")["restarts"] == 1, 60, "the gateway restarted")
    gw = _component(sd, "gateway")
    assert gw["pid"] != gateway_pid
    second = _component(sd, "gateway-2")  # untouched: it answered meanwhile
    assert second["pid"] == second_pid
    assert second["restarts"] == 0
    assert "gateway: Running" in _cli("status", *sd_args).stdout

    # a reader that stops early: the command ends quietly
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    cut = subprocess.run([sys.executable, "-m", "surefoot", "status", *sd_args], stdout=w_fd,
                         stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(w_fd)
    assert cut.stderr == ""
    assert cut.returncode == 141

    up.track()
    up.proc.send_signal(signal.SIGTERM)
    up.proc.wait(60)
    assert up.proc.returncode == 0, up.err.read_text()
    assert "Traceback" not in up.err.read_text()
    assert up.leftovers() == []


@pytest.mark.parametrize("args", [["breakers"], ["breakers", "reset", "--node", "node-1"]])
def test_breakers_without_a_running_up(tmp_path: Path, args: list[str]) -> None:
    out = _cli(*args, "--state-dir", str(tmp_path / "none"))
    assert out.returncode == 2
    assert "no running `surefoot up` found" in one_line(out.stderr)


def test_breakers_needs_a_name(tmp_path: Path) -> None:
    out = _cli("breakers", "force-open", "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert "one of the arguments --revision --node --replica is required" in out.stderr


def test_breakers_against_a_gateway_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SUREFOOT_GATEWAY_ADMIN_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "surefoot", "breakers", "--gateway-url",
                          "http://127.0.0.1:9"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 2
    assert "SUREFOOT_GATEWAY_ADMIN_TOKEN" in one_line(out.stderr)


def test_breakers_flags_after_the_action(tmp_path: Path) -> None:
    # --json and --state-dir are accepted before or after the action
    out = _cli("breakers", "list", "--json", "--state-dir", str(tmp_path / "none"))
    assert out.returncode == 2
    assert str(tmp_path / "none") in one_line(out.stderr)


def test_up_with_a_wrong_redis_password_says_so_at_once(tmp_path: Path, ups: list[Up]) -> None:
    server = EmbeddedRedis()
    proc = subprocess.Popen(server.command(password="right"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _pong(server.port), 10, "redis")
        up = Up(tmp_path, "--port", str(free_port()), "--redis-url",
                f"redis://:wrong@127.0.0.1:{server.port}/0")
        ups.append(up)
        up.proc.wait(60)
        assert up.proc.returncode == 2
        line = one_line(up.err.read_text())
        assert line.startswith("surefoot up: --redis-url: Redis refused the credentials")
        assert up.leftovers() == []
    finally:
        proc.kill()
        proc.wait(5)
        server.stop()


def _pong(port: int) -> bool:
    try:
        redis.Redis(port=port, password="right").ping()
    except redis.RedisError:
        return False
    return True

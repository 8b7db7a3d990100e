"""The gateway learns of a change on the local platform at once: the platform counts changes of
its routing state (replicas, readiness, traffic), ``GET /v1/changes`` long-polls that count,
and the gateway's resolver waits on it before it re-reads the table (the poll stays as the
fallback). Real ``LocalPlatform``, its control API over HTTP, and a real replica process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import HttpServer
from knative.gateway import PlatformResolver
from knative.platforms import NotFound, PermanentPlatformError, Replica, Target
from knative.platforms.local import (
    LocalPlatform,
    LocalPlatformClient,
    LocalSettings,
    RevisionSpec,
    create_control_app,
)
from knative.platforms.local._changes import Changes
from tests.conftest import wait_for

SMALL = ("--embedding-model", "", "--n-ctx", "512", "--max-tokens", "64", "--grace-seconds", "1")
TRAFFIC = {"svc": [Target("a", 100, "primary"), Target("b", 0, "fallback")]}
SPLIT = [Target("a", 40, "primary"), Target("b", 60, "fallback")]
LONG = 30.0  # a poll interval no test waits out: only a change can wake the resolver in time


def _platform(tmp_path: Path, replicas: int = 0) -> LocalPlatform:
    s = LocalSettings(nodes=2, log_dir=str(tmp_path / "logs"), grace_seconds=3.0,
                      base_env=os.environ)
    return LocalPlatform(s, [RevisionSpec("a", "svc", "primary", replicas, 2, SMALL),
                             RevisionSpec("b", "svc", "fallback", 0, 1, SMALL)], TRAFFIC)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[LocalPlatform, str]]:
    p = _platform(tmp_path)
    with HttpServer(create_control_app(p)) as server:
        yield p, server.url


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_changes_wake_waiters_and_ignore_repeats() -> None:
    c = Changes()
    g = c.generation
    assert c.wait(g - 1, LONG) == g  # a caller behind returns at once
    assert c.wait(g, 0) == g  # nothing changed: the same generation after the timeout
    t, out = _in_thread(lambda: c.wait(g, LONG))
    assert c.observe(("a", 1)) == g + 1
    t.join(5)
    assert out == [g + 1]
    assert c.observe(("a", 1)) == g + 1  # the same state again is no change


def test_long_poll_returns_on_a_traffic_change(control: tuple[LocalPlatform, str]) -> None:
    p, url = control
    client = LocalPlatformClient(url)
    g = client.wait_change(0, LONG)  # behind: at once
    assert client.wait_change(g, 0) == g
    t0 = time.monotonic()
    t, out = _in_thread(lambda: client.wait_change(g, LONG))
    time.sleep(0.2)  # the long-poll is waiting in the server
    assert t.is_alive()
    p.set_traffic("svc", SPLIT)
    t.join(10)
    assert out
    assert out[0] > g
    assert time.monotonic() - t0 < LONG / 2


@pytest.mark.parametrize(
    ("query", "field"),
    [("after=x", "after"), ("timeout=soon", "timeout"), ("timeout=-1", "timeout"),
     ("timeout=61", "timeout"), ("timeout=nan", "timeout")],
)
def test_bad_long_poll_is_422_naming_the_field(
    control: tuple[LocalPlatform, str], query: str, field: str
) -> None:
    _, url = control
    r = httpx.get(f"{url}/v1/changes?{query}", timeout=5)
    assert r.status_code == 422
    assert r.json()["error"].startswith(f"{field}:")
    with pytest.raises(PermanentPlatformError, match="timeout"):
        LocalPlatformClient(url).wait_change(0, -1)


def test_resolver_routes_a_change_at_once(control: tuple[LocalPlatform, str]) -> None:
    p, url = control
    res = PlatformResolver(LocalPlatformClient(url), "svc", interval=LONG)
    try:
        assert [r.percent for r in res.table().routes] == [100]
        p.set_traffic("svc", SPLIT)
        wait_for(lambda: len(res.table().routes) == 2, 10, "the new split in the table")
        assert [r.percent for r in res.table().routes] == [40, 60]
    finally:
        res.close()


class _OldControlAPI:
    """A platform whose control API has no long-poll (404), as an older ``surefoot up``."""

    def __init__(self) -> None:
        self.targets = [Target("a", 100)]
        self.waits = 0

    def wait_change(self, after: int, timeout: float) -> int:
        self.waits += 1
        raise NotFound("no route /v1/changes")

    def replicas(self, service: str) -> list[Replica]:
        return [Replica("a-1", "n1", "a", "http://127.0.0.1:9", True)]

    def traffic(self, service: str) -> list[Target]:
        return list(self.targets)


def test_resolver_polls_when_the_platform_cannot_tell() -> None:
    p = _OldControlAPI()
    res = PlatformResolver(p, "svc", interval=0.02)  # type: ignore[arg-type]
    try:
        p.targets = [Target("a", 50), Target("b", 50)]
        wait_for(lambda: len(res.table().routes) == 2, 5, "the polled table")
        assert p.waits == 1  # asked once, then polled
    finally:
        res.close()


def test_a_replica_becoming_ready_is_routed_at_once(tmp_path: Path) -> None:
    """A real replica process: the resolver (poll interval 30 s) has it ready in its table as
    soon as the platform marks it ready."""
    p = _platform(tmp_path, replicas=1)
    p.start()
    try:
        with HttpServer(create_control_app(p)) as server:
            res = PlatformResolver(LocalPlatformClient(server.url), "svc", interval=LONG)
            try:
                assert p.wait_ready(90), p.status()
                wait_for(lambda: res.table().routes[0].ready(), 10, "the ready replica routed")
                ((r,),) = [[r for r in p.replicas("svc") if r.ready]]
                (e,) = res.table().routes[0].ready()
                assert (e.replica, e.url) == (r.name, r.url)
                p.delete_replica(r.name)
                wait_for(lambda: not res.table().routes[0].ready(), 10, "the deleted replica out")
            finally:
                res.close()
    finally:
        p.stop(timeout=5)

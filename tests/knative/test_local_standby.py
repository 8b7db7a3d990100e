"""Warm standbys of the local platform, with real ``surefoot serve`` processes: a standby takes
over a replica lost to a delete (SIGTERM), a SIGKILL, a SIGTERM from outside and an eviction,
and is refilled; two losses in a row; a standby's own crash; placement of a fallback replica
and the reasons a replica stays Pending; the adoption route and its bad inputs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from knative.platforms import PermanentPlatformError, Target
from knative.platforms.local import LocalPlatform, LocalSettings, RevisionSpec
from tests.conftest import wait_for
from tests.knative.test_local_platform import FakeClock, Recorder, group_alive

SMALL = ("--embedding-model", "", "--n-ctx", "512", "--max-tokens", "64", "--grace-seconds", "1",
         "--n-threads", "1")
BAD_MODEL = ("--model", "/nonexistent.gguf", *SMALL)
TRAFFIC = {"svc": [Target("a", 100, "primary"), Target("b", 0, "fallback")]}
TOKEN = "standby-test-token"
LOADING = 90  # seconds a replica or standby of the small model may take on 2 busy cores


def make(tmp_path: Path, revisions: list[RevisionSpec], events: Recorder | None = None,
         clock: Callable[[], float] = time.monotonic, **settings: Any) -> LocalPlatform:
    s = LocalSettings(**{"nodes": 3, "log_dir": str(tmp_path / "logs"), "grace_seconds": 3.0,
                         "crash_backoff": 0.2, "base_env": os.environ, "standby": 1,
                         "standby_refill_delay": 0.0,
                         "env": {"SUREFOOT_INTERNAL_TOKEN": TOKEN},
                         "checkpoint_dir": str(tmp_path / "ckpt"), **settings})
    return LocalPlatform(s, revisions, TRAFFIC, emit=events, clock=clock)


def all_pids(p: LocalPlatform) -> set[int]:
    st = p.status()
    return {r["pid"] for r in st["replicas"] + st["history"] + st["standby"] if r["pid"]}


@pytest.fixture
def stopped() -> Iterator[list[LocalPlatform]]:
    """Platforms the test started; each is stopped, and none of its processes (replicas and
    standbys) may outlive it."""
    platforms: list[LocalPlatform] = []
    pids: set[int] = set()
    yield platforms
    for p in platforms:
        pids.update(all_pids(p))
        p.stop(timeout=5)
    left = sorted(pid for pid in pids if group_alive(pid))
    assert not left, f"processes left behind after stop(): {left}"


def standby_loaded(p: LocalPlatform, revision: str = "a") -> dict[str, Any] | None:
    return next((sb for sb in p.status()["standby"]
                 if sb["revision"] == revision and sb["loaded_at"] and sb["phase"] == "Loaded"),
                None)


def ready_count(p: LocalPlatform, revision: str = "a") -> int:
    return sum(1 for r in p.replicas("svc")
               if r.revision == revision and r.ready and r.phase == "Running")


def replica(p: LocalPlatform, name: str) -> dict[str, Any]:
    return next(r for r in p.status()["replicas"] if r["name"] == name)


def serves(url: str) -> bool:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    return r.status_code == 200


def takeover(p: LocalPlatform, lose: Callable[[], object], ev: Recorder) -> dict[str, Any]:
    """Lose a replica with ``lose`` while a standby is loaded: the standby's process becomes
    a ready replica (no new process starts for it) and serves."""
    sb = wait_for(lambda: standby_loaded(p), LOADING, "a loaded standby")
    ready_before = len(ev.of("pod.ready"))
    lose()
    new = wait_for(lambda: next((r for r in p.status()["replicas"]
                                 if r["standby"] == sb["name"] and r["ready"]), None),
                   10, f"standby {sb['name']} ready as a replica")
    assert new["pid"] == sb["pid"]
    assert new["log"] == sb["log"]
    assert len(ev.of("pod.ready")) > ready_before
    assert serves(new["url"])
    names = {s["name"] for s in p.status()["standby"]}
    assert sb["name"] not in names  # out of the pool; a new one is loading in its place
    assert names
    wait_for(lambda: ready_count(p) == 2, 10, "the revision at its count")
    nodes = [r.node for r in p.replicas("svc") if r.phase != "Terminating"]
    assert len(nodes) == len(set(nodes)), "anti-affinity broken"
    return new


def test_standby_takes_over_after_delete_sigkill_and_sigterm(
        tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 2, 3, SMALL)], ev)
    stopped.append(p)
    p.start()
    assert p.wait_ready(LOADING), p.status()

    # a pod delete through the platform: SIGTERM and drain, the standby serves meanwhile
    victim = p.replicas("svc")[0]
    new = takeover(p, lambda: p.delete_replica(victim.name), ev)
    assert new["node"] != victim.node  # the draining victim still holds its node

    # SIGKILL: the replica keeps its name and node, counts a restart, no backoff to wait
    victim = next(r for r in p.replicas("svc") if r.ready)
    assert victim.pid
    killed = takeover(p, lambda: os.kill(victim.pid or 0, signal.SIGKILL), ev)
    assert (killed["name"], killed["node"]) == (victim.name, victim.node)
    assert killed["restarts"] == 1
    assert ev.of("pod.oomkilled", victim.name)
    assert ev.of("pod.restarted", victim.name)
    wait_for(lambda: not group_alive(victim.pid or 0), 5, "the killed replica's worker")

    # SIGTERM from outside: the replica drains; it is replaced at once, not after its drain
    victim = next(r for r in p.replicas("svc") if r.ready)
    takeover(p, lambda: os.kill(victim.pid or 0, signal.SIGTERM), ev)
    gone = wait_for(lambda: next((h for h in p.status()["history"]
                                  if h["name"] == victim.name), None), 15, "the drained exit")
    assert gone["reason"] == "draining"


def test_eviction_and_two_losses_in_a_row(tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 2, 3, SMALL)], ev)
    stopped.append(p)
    p.start()
    assert p.wait_ready(LOADING), p.status()

    victim = p.replicas("svc")[0]
    p.cordon(victim.node or "")
    report: dict[str, Any] = {}
    new = takeover(p, lambda: report.update(r=p.evict(victim.node or "", timeout=30)), ev)
    assert report["r"].evicted == (victim.name,)
    assert new["node"] != victim.node

    # two losses before the pool refilled: the first is a takeover, the second takes the
    # standby that refills the pool, still loading, and serves once it is loaded
    sb = wait_for(lambda: standby_loaded(p), LOADING, "the refilled standby")
    first, second = [r for r in p.replicas("svc") if r.ready]
    os.kill(first.pid or 0, signal.SIGKILL)
    wait_for(lambda: replica(p, first.name)["standby"] == sb["name"], 5, "the takeover")
    refill = wait_for(lambda: next(iter(p.status()["standby"]), None), 5, "the refill")
    assert refill["phase"] == "Starting"
    os.kill(second.pid or 0, signal.SIGKILL)
    wait_for(lambda: replica(p, second.name)["standby"] == refill["name"], 5,
             "the refill taking over while it loads")
    late = replica(p, second.name)
    assert late["pid"] == refill["pid"]  # no process started from nothing
    assert not late["ready"]  # ready once loaded and adopted
    wait_for(lambda: replica(p, first.name)["ready"], 10, "the first takeover ready")
    assert p.wait_ready(LOADING), p.status()
    assert ready_count(p) == 2
    assert replica(p, late["name"])["ready"]
    assert serves(replica(p, late["name"])["url"])
    nodes = [r.node for r in p.replicas("svc") if r.phase != "Terminating"]
    assert len(nodes) == len(set(nodes))
    assert victim.node not in nodes  # still cordoned
    assert p.status()["cordoned"] == [victim.node]


def test_a_standby_that_crashes_is_restarted_with_backoff(
        tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    """...and one taken over is replaced after the refill delay, not at once."""
    ev = Recorder()
    clock = FakeClock()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 1, 2, SMALL)], ev, clock=clock,
             crash_backoff=5.0, standby_refill_delay=2.0)
    stopped.append(p)
    p.start()
    sb = wait_for(lambda: standby_loaded(p), LOADING, "a loaded standby")
    os.kill(sb["pid"], signal.SIGKILL)
    crashed = wait_for(lambda: next((s for s in p.status()["standby"]
                                     if s["phase"] == "CrashLoopBackOff"), None),
                       10, "the standby in backoff")
    assert (crashed["name"], crashed["restarts"], crashed["pid"]) == (sb["name"], 1, None)
    assert not ev.of("pod.restarted")  # a standby is no replica: no pod events
    clock.now += 5.0
    again = wait_for(lambda: standby_loaded(p), LOADING, "the restarted standby loaded")
    assert again["name"] == sb["name"]
    assert again["pid"] != sb["pid"]
    assert p.wait_ready(LOADING)
    assert [r.name for r in p.replicas("svc")] == [r["name"] for r in p.status()["replicas"]]

    (victim,) = p.replicas("svc")
    p.delete_replica(victim.name)
    wait_for(lambda: ready_count(p) == 1, 10, "the takeover")
    st = p.status()
    # not refilled yet: the replacement serves alone
    assert st["standby"] == [], (st["replicas"], st["standby"])
    clock.now += 2.0
    wait_for(lambda: p.status()["standby"], 5, "the refill after its delay")


def test_pending_reason_and_cordoned_nodes_in_status(
        tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 3, 3, BAD_MODEL)], standby=0,
             crash_backoff=60.0)
    stopped.append(p)
    p.cordon("node-3")
    p.start()
    st = p.status()
    assert st["cordoned"] == ["node-3"]
    (pending,) = [r for r in st["replicas"] if r["phase"] == "Pending"]
    reason = pending["pending_reason"]
    assert pending["reason"] == reason  # what `surefoot status` shows
    assert reason.startswith("0/3 nodes available")
    assert "1 cordoned (node-3)" in reason
    assert "2 already hold a replica of a, anti-affinity" in reason
    assert all(r["pending_reason"] is None for r in st["replicas"] if r["phase"] != "Pending")
    p.uncordon("node-3")
    st = p.status()
    assert st["cordoned"] == []
    assert all(r["phase"] != "Pending" for r in st["replicas"])


def test_a_fallback_replacement_avoids_nodes_with_a_primary(
        tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    """With a node free of primaries, a fallback goes there, even past a lighter node that
    holds a primary."""
    from knative.platforms.local._placement import placeable
    from knative.platforms.local._records import NodeRecord, ReplicaRecord

    specs = {"a": RevisionSpec("a", "svc", "primary", 2, 3),
             "b": RevisionSpec("b", "svc", "fallback", 1, 2),
             "x": RevisionSpec("x", "other", "primary", 1, 1)}
    nodes = {f"node-{i}": NodeRecord(f"node-{i}") for i in range(1, 5)}
    reps = [ReplicaRecord("a-1", "a", "svc", "node-1", phase="Running"),
            ReplicaRecord("a-2", "a", "svc", "node-2", phase="Running"),
            ReplicaRecord("b-1", "b", "svc", "node-3", phase="Terminating"),
            ReplicaRecord("x-1", "x", "other", "node-4", phase="Running"),
            ReplicaRecord("x-2", "x", "other", "node-4", phase="Running")]
    got = [n.name for n in placeable(nodes, reps, specs["b"], specs)]
    assert got == ["node-4", "node-1", "node-2"]  # node-3 holds the terminating fallback
    # a primary still goes by load alone
    assert [n.name for n in placeable(nodes, reps, specs["a"], specs)] == ["node-3", "node-4"]
    nodes["node-4"].unschedulable = True
    assert [n.name for n in placeable(nodes, reps, specs["b"], specs)] == ["node-1", "node-2"]


def test_bad_standby_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentPlatformError, match="standby: must be 0 or more"):
        make(tmp_path, [RevisionSpec("a", "svc", "primary", 1, 1, SMALL)], standby=-1)

"""LocalPlatform with real ``surefoot serve`` processes: placement under anti-affinity,
Pending, crash backoff, delete, evict with the disruption budget, the control API and its
client, and that stopping leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import Event, HttpServer
from knative import Platform
from knative.platforms import (
    NotFound,
    PermanentPlatformError,
    Replica,
    Target,
    TemporaryPlatformError,
    TooManyRequests,
)
from knative.platforms.local import (
    LocalPlatform,
    LocalPlatformClient,
    LocalSettings,
    RevisionSpec,
    create_control_app,
)
from knative.platforms.local._procs import group_members
from surefoot._cmd_up import collect_status, format_status
from tests.conftest import wait_for

# The real model, small settings: it loads in a second or two.
# The replica drains within 1 s, inside the platform's grace of 3 s.
SMALL = ("--embedding-model", "", "--n-ctx", "512", "--max-tokens", "64", "--grace-seconds", "1")
BAD_MODEL = ("--model", "/nonexistent.gguf", *SMALL)
TRAFFIC = {"svc": [Target("a", 100, "primary"), Target("b", 0, "fallback")]}


class Recorder:
    """The ``emit`` callback: every lifecycle event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: str, pod: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.type == f"dev.surefoot.{kind}"
                    and (pod is None or e.data.get("pod") == pod)]


class FakeClock:
    """The supervisor's clock: backoff deadlines move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def group_alive(pid: int) -> bool:
    """Whether any process of the group ``pid`` leads (a serve master and its worker) runs; a
    zombie does not (one orphaned is init's to reap, in its own time)."""
    return bool(group_members(pid))


def seen_pids(p: LocalPlatform) -> set[int]:
    st = p.status()
    return {r["pid"] for r in st["replicas"] + st["history"] if r["pid"]}


def make(tmp_path: Path, revisions: list[RevisionSpec], events: Recorder | None = None,
         clock: Callable[[], float] = time.monotonic, **settings: Any) -> LocalPlatform:
    s = LocalSettings(**{"nodes": 3, "log_dir": str(tmp_path / "logs"), "grace_seconds": 3.0,
                         "crash_backoff": 0.2, "base_env": os.environ, **settings})
    return LocalPlatform(s, revisions, TRAFFIC, emit=events, clock=clock)


@pytest.fixture
def stopped() -> Iterator[list[LocalPlatform]]:
    """Platforms the test started; each is stopped, and every process it ran must be gone."""
    platforms: list[LocalPlatform] = []
    pids: set[int] = set()

    def watch() -> None:
        for p in platforms:
            pids.update(seen_pids(p))

    yield platforms
    for p in platforms:
        watch()
        p.stop(timeout=5)
    left = sorted(pid for pid in pids if group_alive(pid))
    assert not left, f"processes left behind after stop(): {left}"


def test_anti_affinity_pending_and_cordon(tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 3, 5, SMALL),
                        RevisionSpec("b", "svc", "fallback", 2, 3, SMALL)], ev)
    stopped.append(p)
    p.cordon("node-3")
    p.start()

    a = [r for r in p.replicas("svc") if r.revision == "a"]
    placed = sorted((r for r in a if r.node), key=lambda r: r.node or "")
    pending = [r for r in a if r.node is None]
    assert [r.node for r in placed] == ["node-1", "node-2"]  # never two of "a" on one node
    assert all(r.pid and r.phase == "Running" for r in placed)
    assert len(pending) == 1
    assert (pending[0].phase, pending[0].pid, pending[0].url) == ("Pending", None, None)
    # Another revision may share nodes with "a", never with itself.
    b = [r for r in p.replicas("svc") if r.revision == "b"]
    assert sorted(r.node or "" for r in b) == ["node-1", "node-2"]
    assert [n.unschedulable for n in p.nodes()] == [False, False, True]

    text = format_status(collect_status(p, "svc", None, None))
    pending_line = next(line for line in text.splitlines() if line.startswith("pending"))
    assert pending[0].name in pending_line
    assert "node-3 (cordoned)" in text

    # Uncordoning node-3 places the pending replica there at once.
    p.uncordon("node-3")
    now = {r.name: r for r in p.replicas("svc")}
    assert now[pending[0].name].node == "node-3"
    assert now[pending[0].name].pid
    assert len(ev.of("node.cordoned")) == 1
    assert len(ev.of("node.uncordoned")) == 1

    # Cordon keeps running replicas (no eviction) but steers new ones away.
    p.cordon("node-1")
    assert all(r.node for r in p.replicas("svc") if r.revision == "a")
    p.set_scale("svc", "b", 3, 3)
    old_b = {x.name for x in b}
    new_b = [r for r in p.replicas("svc") if r.revision == "b" and r.name not in old_b]
    assert [r.node for r in new_b] == ["node-3"]
    # A fourth "a" has no node left (3 nodes, all used by "a"): Pending, even after uncordon.
    p.set_scale("svc", "a", 4, 5)
    p.uncordon("node-1")
    a_pending = [r for r in p.replicas("svc") if r.revision == "a" and r.phase == "Pending"]
    assert len(a_pending) == 1
    assert a_pending[0].node is None
    assert p.status()["replicas"][0]["log"].startswith(str(tmp_path / "logs"))


def test_crash_at_start_backs_off_and_reports_crashloop(tmp_path: Path,
                                                        stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    clock = FakeClock()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 1, 1, BAD_MODEL)], ev, clock,
             nodes=2, crash_backoff=0.2, crash_backoff_max=0.3, crashloop_after=2)
    stopped.append(p)
    p.start()
    (first,) = p.replicas("svc")
    assert first.pid
    assert first.node

    def state() -> dict[str, Any]:
        (r,) = p.status()["replicas"]
        return r

    def crashed(n: int) -> Callable[[], bool]:
        return lambda: state()["restarts"] == n and state()["phase"] == "CrashLoopBackOff"

    pids = [first.pid]
    for n, backoff in ((1, 0.2), (2, 0.3)):  # 0.2 s, then doubled but capped at 0.3 s
        wait_for(crashed(n), 30, f"crash {n} of the replica with a bad model path")
        r = state()
        assert (r["name"], r["node"], r["exit_code"], r["pid"]) == (first.name, first.node, 2,
                                                                    None)
        # The clock stands still: however often the supervisor looks, no restart before the
        # backoff has passed.
        time.sleep(0.3)
        clock.now += backoff - 0.01
        time.sleep(0.3)
        assert state()["pid"] is None
        assert state()["restarts"] == n
        clock.now += 0.02
        pid = wait_for(lambda: state()["pid"], 5, "the restart after the backoff")
        assert pid not in pids
        pids.append(pid)

    restarted = [e.data["restart_count"] for e in ev.of("pod.restarted", first.name)]
    assert restarted == [1, 2]
    loops = ev.of("pod.crashloop", first.name)
    assert [e.data["restart_count"] for e in loops] == [2]  # reported from crashloop_after on
    assert "exit code 2" in loops[0].data["message"]
    assert not ev.of("pod.ready")
    assert not ev.of("pod.oomkilled")
    wait_for(crashed(3), 30, "crash 3")
    assert "CrashLoopBackOff" in format_status(collect_status(p, "svc", None, None))
    assert "does not exist" in (tmp_path / "logs" / f"{first.name}.log").read_text()


def test_delete_evict_budget_and_crash_of_a_ready_replica(
        tmp_path: Path, stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 2, 3, SMALL)], ev)
    stopped.append(p)
    p.start()
    with HttpServer(create_control_app(p)) as server:
        client = LocalPlatformClient(server.url)
        assert p.wait_ready(90), p.status()
        r1, r2 = sorted(p.replicas("svc"), key=lambda r: r.node or "")
        assert {r1.node, r2.node} == {"node-1", "node-2"}
        assert r1.ready
        assert r2.ready
        assert r1.pid
        assert r2.pid
        assert {e.data["pod"] for e in ev.of("pod.ready")} == {r1.name, r2.name}

        # Delete (through the control API): event, a replacement, the old process gone.
        client.delete_replica(r1.name)
        (deleted,) = ev.of("pod.deleted", r1.name)
        assert deleted.data["terminating"]
        assert deleted.data["node"] == r1.node
        assert ev.of("pod.notready", r1.name)[0].data["reason"] == "Terminating"
        by_name = {r.name: r for r in p.replicas("svc")}
        assert by_name[r1.name].phase == "Terminating"
        assert not by_name[r1.name].ready
        (r3,) = [r for r in by_name.values() if r.name not in (r1.name, r2.name)]
        assert r3.node == "node-3"  # node-1 is still held while r1 terminates

        # Budget: r3 is not ready yet, so r2 may not go.
        with pytest.raises(TooManyRequests):
            p.evict_replica(r2.name)
        report = client.evict(r2.node or "", timeout=0.3)
        assert report.refused == (r2.name,)
        assert report.evicted == ()
        assert not report.complete
        assert not ev.of("pod.evicted")

        wait_for(lambda: not group_alive(r1.pid or 0), 15, "the deleted replica's exit")
        wait_for(lambda: r1.name not in {r.name for r in p.replicas("svc")}, 5,
                 "the deleted replica to be forgotten")
        gone = [h for h in p.status()["history"] if h["name"] == r1.name]
        assert gone
        assert gone[0]["reason"] == "deleted"
        assert p.wait_ready(90), p.status()

        # Evict r2's node: allowed now, replacement lands on the node r1 left.
        report = p.evict(r2.node or "", timeout=30)
        assert report.evicted == (r2.name,)
        assert report.complete
        (evicted,) = ev.of("pod.evicted", r2.name)
        assert evicted.data["node"] == r2.node
        (r4,) = [r for r in p.replicas("svc") if r.name not in (r2.name, r3.name)]
        assert r4.node == r1.node
        wait_for(lambda: not group_alive(r2.pid or 0), 15, "the evicted replica's exit")
        assert p.wait_ready(90), p.status()

        # A ready replica dies (SIGKILL of the serve master): its worker goes with it, the
        # replica restarts on its node with the same port and becomes ready again.
        (victim,) = [r for r in p.replicas("svc") if r.name == r3.name]
        assert victim.pid
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: ev.of("pod.restarted", r3.name), 10, "pod.restarted")
        assert ev.of("pod.oomkilled", r3.name)
        wait_for(lambda: not group_alive(victim.pid or 0), 5, "the dead master's worker")
        assert p.wait_ready(90), p.status()
        (again,) = [r for r in p.replicas("svc") if r.name == r3.name]
        assert again.pid != victim.pid
        assert again.url == victim.url
        assert again.node == r3.node
        assert p.status()["replicas"][0]["restarts"] + p.status()["replicas"][1]["restarts"] == 1


def _traffic_round_trips(c: LocalPlatformClient, p: LocalPlatform, split: list[Target]) -> None:
    c.set_traffic("svc", split)
    assert p.traffic("svc") == split == c.traffic("svc")
    with pytest.raises(PermanentPlatformError, match="sum to 90") as bad:
        c.set_traffic("svc", [Target("a", 40), Target("b", 50)])
    assert not isinstance(bad.value, NotFound)
    with pytest.raises(PermanentPlatformError, match="unknown revisions"):
        c.set_traffic("svc", [Target("zzz", 100)])
    with pytest.raises(NotFound):
        c.set_traffic("nope", [Target("a", 100)])
    with pytest.raises(NotFound):
        c.traffic("nope")
    assert p.traffic("svc") == split


def _scale_round_trips(c: LocalPlatformClient, p: LocalPlatform) -> Replica:
    c.set_scale("svc", "a", 1, 2)
    (ra,) = c.replicas("svc")
    assert (ra.revision, ra.node, ra.phase) == ("a", "node-1", "Running")
    assert ra.pid
    assert [(x.name, x.node, x.url) for x in p.replicas("svc")] == [(ra.name, ra.node, ra.url)]
    with pytest.raises(PermanentPlatformError, match="min"):
        c.set_scale("svc", "a", 3, 1)
    with pytest.raises(NotFound):
        c.set_scale("svc", "zzz", 1, 1)
    with pytest.raises(NotFound):
        c.set_scale("other", "a", 1, 1)
    return ra


def _nodes_round_trip(c: LocalPlatformClient, p: LocalPlatform) -> None:
    c.cordon("node-2")
    assert [n.unschedulable for n in c.nodes()] == [False, True]
    c.uncordon("node-2")
    base = dict(p.nodes()[0].labels)
    assert base["nvidia.com/gpu.present"] == "true"
    c.label("node-1", "surefoot.dev/quarantined", "true")
    assert p.nodes()[0].labels == {**base, "surefoot.dev/quarantined": "true"}
    c.label("node-1", "surefoot.dev/quarantined", None)
    assert c.nodes()[0].labels == base

    for call in (lambda: c.delete_replica("nope"), lambda: c.cordon("node-9"),
                 lambda: c.uncordon("node-9"), lambda: c.label("node-9", "k", "v"),
                 lambda: c.evict("node-9", timeout=1)):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound, match="node-1, node-2"):
        c.evict("node-9")


def _evict_and_delete(c: LocalPlatformClient, ev: Recorder, ra: Replica) -> None:
    # A replica that is not ready yet may always be evicted.
    report = c.evict("node-1", timeout=5)
    assert report.evicted == (ra.name,)
    assert report.complete
    assert report.node == "node-1"
    assert ev.of("pod.evicted", ra.name)
    (rb,) = [r for r in c.replicas("svc") if r.phase != "Terminating"]
    assert rb.node == "node-2"
    c.delete_replica(rb.name)
    assert ev.of("pod.deleted", rb.name)
    with contextlib.suppress(NotFound):  # terminating: a no-op; already gone: 404
        c.delete_replica(rb.name)
    assert len(ev.of("pod.deleted", rb.name)) == 1
    c.set_scale("svc", "a", 0, 2)


MALFORMED: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "/v1/services/svc/traffic", {"content": b"{not json"}, "JSON object"),
    ("PUT", "/v1/services/svc/traffic", {"json": [1, 2]}, "JSON object"),
    ("PUT", "/v1/services/svc/traffic", {"json": {"targets": 5}}, "targets"),
    ("PUT", "/v1/services/svc/traffic", {"json": {"targets": [{"percent": 100}]}},
     "targets"),
    ("PUT", "/v1/services/svc/traffic", {"json": {"targets": ["a"]}}, "targets"),
    ("PUT", "/v1/services/svc/traffic",
     {"json": {"targets": [{"revision": "a", "percent": "x"}]}}, "targets"),
    ("PUT", "/v1/services/svc/revisions/a/scale", {"json": {"min": "x", "max": 1}},
     "min and max"),
    ("PUT", "/v1/services/svc/revisions/a/scale", {"content": b""}, "JSON object"),
    ("PATCH", "/v1/nodes/node-1/labels", {"json": ["k"]}, "JSON object"),
    ("POST", "/v1/nodes/node-1/evict?timeout=abc", {}, "timeout"),
    ("POST", "/v1/nodes/node-1/evict?timeout=nan", {}, "timeout"),
    ("POST", "/v1/nodes/node-1/evict?timeout=-1", {}, "timeout"),
    ("POST", "/v1/nodes/node-1/reboot", {}, "reboot"),
]


def _malformed_requests_are_4xx(url: str, p: LocalPlatform, split: list[Target]) -> None:
    """Malformed requests: 4xx with a JSON error that says what is wrong, never a 500."""
    http = httpx.Client(base_url=url, timeout=5)
    for method, path, kwargs, word in MALFORMED:
        r = http.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert word in r.json()["error"], (path, r.json())
    assert p.traffic("svc") == split
    assert "surefoot.dev/quarantined" not in p.nodes()[0].labels
    http.close()


def test_control_api_round_trips_and_errors(tmp_path: Path,
                                            stopped: list[LocalPlatform]) -> None:
    ev = Recorder()
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 0, 2, SMALL),
                        RevisionSpec("b", "svc", "fallback", 0, 1, SMALL)], ev, nodes=2)
    stopped.append(p)
    p.start()
    with HttpServer(create_control_app(p)) as server:
        c = LocalPlatformClient(server.url)
        assert isinstance(c, Platform)
        assert c.nodes() == p.nodes()
        assert [n.name for n in c.nodes()] == ["node-1", "node-2"]
        assert c.traffic("svc") == TRAFFIC["svc"]
        assert c.replicas("svc") == []

        split = [Target("a", 40, "primary"), Target("b", 60, "fallback")]
        _traffic_round_trips(c, p, split)
        ra = _scale_round_trips(c, p)
        _nodes_round_trip(c, p)
        _evict_and_delete(c, ev, ra)

        st = c.status()
        assert set(st) >= {"nodes", "replicas", "revisions", "traffic", "history"}
        assert {r["name"] for r in st["revisions"]} == {"a", "b"}

        _malformed_requests_are_4xx(server.url, p, split)

    with pytest.raises(TemporaryPlatformError, match="surefoot up"):
        LocalPlatformClient(server.url, timeout=1).nodes()


def test_stop_terminates_replicas_that_ignore_sigterm(tmp_path: Path) -> None:
    """stop() escalates to SIGKILL after its grace; nothing survives it."""
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 2, 2, SMALL)], nodes=2)
    p.start()
    pids = seen_pids(p)
    assert len(pids) == 2
    for pid in pids:  # a stopped process cannot act on SIGTERM (a wedged replica)
        os.kill(pid, signal.SIGSTOP)
    p.stop(timeout=0.5)
    assert not [pid for pid in pids if group_alive(pid)]


def test_nothing_starts_after_stop(tmp_path: Path) -> None:
    """A request that arrives while (or after) the platform stops launches no process that
    stop() would never see."""
    p = make(tmp_path, [RevisionSpec("a", "svc", "primary", 1, 3, SMALL)], nodes=2)
    p.start()
    (r,) = p.replicas("svc")
    p.stop(timeout=3)
    assert r.pid
    assert not group_alive(r.pid)
    p.set_scale("svc", "a", 2, 3)
    p.delete_replica(r.name)
    p.uncordon("node-1")
    assert not [x for x in p.replicas("svc") if x.pid and group_alive(x.pid)], p.replicas("svc")

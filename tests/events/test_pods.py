"""The pod/node lifecycle source: the tracker's diffs without I/O, then the watch against the
fake Kubernetes API server (410 Gone, re-list, sweep, server errors, health)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import events as ev
from tests.events.test_lifecycle import node, pod
from tests.kube_fake import FakeKubeServer

SOURCE = "/surefoot/sources/pods"


def kinds(events: list[ev.Event]) -> list[str]:
    return [e.type.removeprefix("dev.surefoot.") for e in events]


# --- tracker (pure) -----------------------------------------------------------------------


def test_first_list_is_a_silent_baseline() -> None:
    t = ev.Tracker("pod", SOURCE)
    assert t.apply_list([pod("a", waiting="CrashLoopBackOff"), pod("b")], "10") == []
    assert len(t) == 2
    assert t.last_rv == "10"
    assert t.listed


def test_watch_events_become_catalog_events() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="5")], "5")
    out = t.apply_event("MODIFIED", pod("a", ready=False, rv="6"))
    assert kinds(out) == ["pod.notready"]
    assert out[0].source == SOURCE
    assert out[0].subject == "pod/default/a"
    out = t.apply_event("MODIFIED", pod("a", ready=False, restarts=1, last="OOMKilled", rv="7"))
    assert kinds(out) == ["pod.oomkilled"]
    assert kinds(t.apply_event("ADDED", pod("b", ready=False, rv="8"))) == []
    assert kinds(t.apply_event("MODIFIED", pod("b", ready=True, rv="9"))) == ["pod.ready"]
    assert kinds(t.apply_event("DELETED", pod("b", rv="10"))) == ["pod.deleted"]
    assert t.last_rv == "10"
    assert len(t) == 1


def test_graceful_delete_is_reported_once() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="1")], "1")
    assert kinds(t.apply_event("MODIFIED", pod("a", deleting=True, rv="2"))) == ["pod.deleted"]
    assert t.apply_event("DELETED", pod("a", deleting=True, rv="3")) == []


def test_eviction_seen_only_in_the_deleted_object() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="1")], "1")
    out = t.apply_event("DELETED", pod("a", deleting=True, disruption="EvictionByEvictionAPI",
                                       rv="2"))
    assert kinds(out) == ["pod.evicted"]


def test_unknown_pod_deleted() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([], "1")
    assert kinds(t.apply_event("DELETED", pod("ghost", rv="2"))) == ["pod.deleted"]


def test_relist_reports_what_the_watch_missed() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="1"), pod("b", rv="2"), pod("c", rv="3", ready=False)], "3")
    out = t.apply_list([pod("a", rv="1"), pod("c", rv="9", ready=True)], "10")
    assert sorted(kinds(out)) == ["pod.deleted", "pod.ready"]
    deleted = next(e for e in out if e.type.endswith("deleted"))
    assert ev.payload_of(deleted).missed  # type: ignore[attr-defined]
    assert deleted.subject == "pod/default/b"


def test_recreated_pod_with_same_name_is_a_delete_then_new() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="1")], "1")
    fresh = pod("a", rv="5", ready=False)
    fresh["metadata"]["uid"] = "other"
    assert kinds(t.apply_list([fresh], "5")) == ["pod.deleted"]


def test_stale_list_and_old_events_are_ignored() -> None:
    t = ev.Tracker("pod", SOURCE)
    t.apply_list([pod("a", rv="5")], "5")
    t.apply_event("MODIFIED", pod("a", ready=False, rv="8"))
    assert t.apply_list([pod("a", rv="5")], "6") == []  # list older than the watch
    assert t.apply_event("MODIFIED", pod("a", ready=True, rv="7")) == []  # replayed, older


def test_ids_are_deterministic() -> None:
    def run() -> list[str]:
        t = ev.Tracker("pod", SOURCE)
        t.apply_list([pod("a", rv="1")], "1")
        return [e.id for e in t.apply_event("MODIFIED", pod("a", ready=False, rv="2"))]

    assert run() == run() == ["pod:uid-a:notready:2"]


def test_node_tracker() -> None:
    t = ev.Tracker("node", SOURCE)
    t.apply_list([node("n1"), node("n2")], "1")
    n = node("n1", unschedulable=True)
    n["metadata"]["resourceVersion"] = "2"
    assert kinds(t.apply_event("MODIFIED", n)) == ["node.cordoned"]
    assert kinds(t.apply_list([n], "3")) == ["node.notready"]  # n2 is gone
    gone = dict(n, metadata=dict(n["metadata"], resourceVersion="4"))
    assert kinds(t.apply_event("DELETED", gone)) == ["node.notready"]


# --- against the fake Kubernetes API ------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.cond = threading.Condition()

    def __call__(self, event: ev.Event) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, etype: str, n: int = 1, timeout: float = 10) -> list[ev.Event]:
        def match() -> list[ev.Event]:
            return [e for e in self.events if e.type == f"dev.surefoot.{etype}"]

        with self.cond:
            assert self.cond.wait_for(lambda: len(match()) >= n, timeout=timeout), (
                f"no {etype}; got {kinds(self.events)}")
            return match()


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        server.add_node("gpu-1")
        server.add_node("gpu-2")
        server.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
        server.add_pod("llm-b", node="gpu-2", labels={"app": "llm"})
        server.add_pod("other", node="gpu-2", labels={"app": "other"})
        yield server


SETTINGS = ev.PodSourceSettings(namespace="default", selector="app=llm", sweep_interval_s=3600,
                                watch_timeout_s=30, retry_min_s=0.01, retry_max_s=0.05)


def update_pod(kube: FakeKubeServer, name: str, **status: Any) -> None:
    kube.set_pod_status(name, status)


def test_live_watch_reports_pod_and_node_changes(kube: FakeKubeServer) -> None:
    got = Collector()
    api = ev.KubernetesApi(kube.api_client())
    source = ev.PodLifecycleSource(SETTINGS, api, got).start()
    try:
        deadline = time.monotonic() + 10
        while not source.healthy():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        kube.set_pod_ready("llm-a", False)
        kube.set_pod_ready("other", False)  # not selected: no event
        (nr,) = got.wait_for("pod.notready")
        assert nr.subject == "pod/default/llm-a"
        update_pod(kube, "llm-b", containerStatuses=[{
            "name": "main", "restartCount": 0,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}])
        (cl,) = got.wait_for("pod.crashloop")
        assert ev.payload_of(cl).node == "gpu-2"  # type: ignore[attr-defined]
        kube.delete_pod("llm-a")
        (d,) = got.wait_for("pod.deleted")
        assert d.subject == "pod/default/llm-a"
        assert not ev.payload_of(d).missed
        core = __import__("kubernetes").client.CoreV1Api(kube.api_client())
        core.patch_node("gpu-1", {"spec": {"unschedulable": True}})
        (c,) = got.wait_for("node.cordoned")
        assert c.subject == "node/gpu-1"
        kube.set_node_ready("gpu-2", False)
        (n,) = got.wait_for("node.notready")
        assert n.subject == "node/gpu-2"
    finally:
        source.stop()
    assert all(not t.is_alive() for t in source._threads)
    assert "other" not in {e.subject for e in got.events}
    assert sorted(kinds(got.events)) == ["node.cordoned", "node.notready", "pod.crashloop",
                                         "pod.deleted", "pod.notready"]


def test_410_gone_relists_and_reports_missed_deletion(kube: FakeKubeServer) -> None:
    got = Collector()
    tracker = ev.Tracker("pod", SOURCE)
    w = ev.ResourceWatcher("pod", ev.KubernetesApi(kube.api_client()), tracker, got, SETTINGS)
    assert w.relist() == []  # baseline
    old_rv = tracker.last_rv
    kube.delete_pod("llm-b")
    kube.set_pod_ready("llm-a", False)
    kube.compact()
    assert w.watch_once(threading.Event()) == []  # the watch from old_rv answers 410
    assert w._need_list
    assert tracker.last_rv == old_rv
    out = w.relist()
    assert sorted(kinds(out)) == ["pod.deleted", "pod.notready"]
    deleted = next(e for e in out if e.type.endswith("deleted"))
    assert ev.payload_of(deleted).missed  # type: ignore[attr-defined]
    assert got.events == out
    assert int(tracker.last_rv or 0) > int(old_rv or 0)


def test_run_loop_recovers_from_410_while_running(kube: FakeKubeServer) -> None:
    got = Collector()
    api = ev.KubernetesApi(kube.api_client())
    source = ev.PodLifecycleSource(
        ev.PodSourceSettings(namespace="default", selector="app=llm", watch_nodes=False,
                             sweep_interval_s=3600, retry_min_s=0.01), api, got).start()
    try:
        watcher = source.watchers[0]
        deadline = time.monotonic() + 10
        while not source.healthy():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        kube.set_pod_ready("other", False)  # not selected: the version moves on unseen
        kube.compact()
        kube.end_watches()  # reconnect from an rv that is now compacted -> 410 -> re-list
        while watcher.relists < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        kube.delete_pod("llm-a")
        got.wait_for("pod.deleted")
    finally:
        source.stop()
    assert kinds(got.events) == ["pod.deleted"]


def test_sweep_catches_changes_without_a_watch(kube: FakeKubeServer) -> None:
    got = Collector()
    source = ev.PodLifecycleSource(SETTINGS, ev.KubernetesApi(kube.api_client()), got)
    assert source.sweep() == []
    kube.set_pod_ready("llm-a", False)
    kube.delete_pod("llm-b")
    kube.set_node_ready("gpu-1", False)
    update_pod(kube, "llm-a", containerStatuses=[{
        "name": "main", "restartCount": 1,
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "state": {}}])
    out = source.sweep()
    assert sorted(kinds(out)) == ["node.notready", "pod.deleted", "pod.notready"]
    # restart counts are only compared between two looks at a container
    update_pod(kube, "llm-a", containerStatuses=[{
        "name": "main", "restartCount": 2,
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "state": {}}])
    assert kinds(source.sweep()) == ["pod.oomkilled"]
    assert source.sweeps == 3


def test_server_errors_are_retried(kube: FakeKubeServer) -> None:
    got = Collector()
    kube.fail_next("/api/v1/namespaces/default/pods", 500, times=3)
    source = ev.PodLifecycleSource(
        ev.PodSourceSettings(namespace="default", watch_nodes=False, sweep_interval_s=3600,
                             retry_min_s=0.01, retry_max_s=0.02),
        ev.KubernetesApi(kube.api_client()), got).start()
    try:
        deadline = time.monotonic() + 10
        while not source.healthy():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert source.watchers[0].errors >= 1
        assert "500" in source.watchers[0].last_error
        kube.delete_pod("other")
        got.wait_for("pod.deleted")
    finally:
        source.stop()


def test_health_endpoint(kube: FakeKubeServer) -> None:
    source = ev.PodLifecycleSource(SETTINGS, ev.KubernetesApi(kube.api_client()), Collector())
    client = ev.create_pods_health_app(source).test_client()
    assert client.get("/healthz").status_code == 503
    source.sweep()
    assert client.get("/healthz").status_code == 200
    status = client.get("/status").get_json()
    assert status["watchers"]["pod"]["objects"] == 2  # the selector leaves "other" out
    assert status["watchers"]["node"]["objects"] == 2


def test_unreachable_api_is_a_temporary_error(free_port: int) -> None:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port}"
    cfg.retries = 0
    api = ev.KubernetesApi(client.ApiClient(cfg))
    with pytest.raises(ev.TemporaryError):
        api.list("pod", None, "")


def test_forbidden_is_permanent(kube: FakeKubeServer) -> None:
    kube.fail_next("/api/v1/nodes", 403)
    with pytest.raises(ev.PermanentError):
        ev.KubernetesApi(kube.api_client()).list("node", None, "")

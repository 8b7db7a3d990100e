"""Pure pod/node diff rules, and the Knative ApiServerSource / PingSource mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

import events as ev


def pod(name: str = "p1", *, ready: bool | None = True, restarts: int = 0,
        waiting: str = "", last: str = "", terminated: str = "", deleting: bool = False,
        evicted: str = "", disruption: str = "", rv: str = "1") -> dict[str, Any]:
    conds = []
    if ready is not None:
        conds.append({"type": "Ready", "status": "True" if ready else "False",
                      "reason": "" if ready else "ContainersNotReady"})
    if disruption:
        conds.append({"type": "DisruptionTarget", "status": "True", "reason": disruption,
                      "message": "Eviction API: evicting"})
    cs: dict[str, Any] = {"name": "user-container", "restartCount": restarts, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": "back-off 10s"}}
    if terminated:
        cs["state"] = {"terminated": {"reason": terminated, "exitCode": 137}}
    if last:
        cs["lastState"] = {"terminated": {"reason": last, "exitCode": 137 if last == "OOMKilled"
                                          else 1}}
    meta: dict[str, Any] = {
        "name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": rv,
        "labels": {"serving.knative.dev/revision": "llm-00001",
                   "serving.knative.dev/service": "llm"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        meta["deletionGracePeriodSeconds"] = 30
    status: dict[str, Any] = {"phase": "Running", "conditions": conds, "containerStatuses": [cs]}
    if evicted:
        status.update(phase="Failed", reason="Evicted", message=evicted)
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": "n1"}, "status": status}


def node(name: str = "n1", *, ready: str = "True", unschedulable: bool = False) -> dict[str, Any]:
    meta = {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}
    return {"kind": "Node", "metadata": meta,
            "spec": {"unschedulable": unschedulable} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"
                                       if ready == "True" else "NodeStatusUnknown"}]}}


def types(payloads: list[ev.EventData]) -> list[str]:
    return [p.TYPE.removeprefix("dev.surefoot.") for p in payloads]


def diff(old: dict[str, Any] | None, new: dict[str, Any] | None, **kw: Any) -> list[ev.EventData]:
    return ev.diff_pod(ev.pod_state(old) if old else None, ev.pod_state(new) if new else None, **kw)


def test_pod_state_fields() -> None:
    s = ev.pod_state(pod(restarts=2))
    assert (s.namespace, s.name, s.node, s.revision, s.service, s.ready) == (
        "default", "p1", "n1", "llm-00001", "llm", True)
    assert s.containers[0].restart_count == 2


def test_baseline_reports_nothing() -> None:
    assert diff(None, pod(waiting="CrashLoopBackOff"), baseline=True) == []


def test_new_pod_becoming_ready() -> None:
    assert types(diff(None, pod(ready=False))) == []
    assert types(diff(pod(ready=False), pod(ready=True))) == ["pod.ready"]
    assert types(diff(pod(ready=True), pod(ready=False))) == ["pod.notready"]
    assert diff(pod(), pod()) == []


def test_deleted_terminating_then_gone_is_one_event() -> None:
    (first,) = diff(pod(), pod(deleting=True, ready=True))
    assert isinstance(first, ev.PodDeleted)
    assert first.terminating
    assert first.grace_period_seconds == 30
    assert diff(pod(deleting=True), None) == []


def test_deleted_without_terminating_phase() -> None:
    (gone,) = diff(pod(), None)
    assert isinstance(gone, ev.PodDeleted)
    assert not gone.terminating
    assert not gone.missed
    (missed,) = diff(pod(), None, missed=True)
    assert isinstance(missed, ev.PodDeleted)
    assert missed.missed


def test_evicted_by_kubelet_and_by_eviction_api() -> None:
    out = diff(pod(), pod(evicted="The node was low on memory.", ready=None))
    assert types(out) == ["pod.evicted", "pod.notready"]
    assert out[0].reason == "Evicted"  # type: ignore[attr-defined]
    out = diff(pod(), pod(deleting=True, disruption="EvictionByEvictionAPI"))
    assert types(out) == ["pod.evicted"]
    assert out[0].reason == "EvictionByEvictionAPI"  # type: ignore[attr-defined]
    # Once evicted, the deletion that follows is not a second event.
    assert diff(pod(deleting=True, disruption="EvictionByEvictionAPI"), None) == []


def test_oomkilled_restart_and_crashloop() -> None:
    out = diff(pod(restarts=0), pod(restarts=1, last="OOMKilled", ready=False))
    assert types(out) == ["pod.oomkilled", "pod.notready"]
    assert out[0].exit_code == 137  # type: ignore[attr-defined]
    assert types(diff(pod(restarts=1), pod(restarts=2, last="Error"))) == ["pod.restarted"]
    out = diff(pod(restarts=2, ready=False), pod(restarts=2, waiting="CrashLoopBackOff",
                                                 ready=False))
    assert types(out) == ["pod.crashloop"]
    # staying in CrashLoopBackOff is not a new event
    assert diff(pod(waiting="CrashLoopBackOff"), pod(waiting="CrashLoopBackOff")) == []


def test_oomkilled_without_restart() -> None:
    assert types(diff(pod(), pod(terminated="OOMKilled"))) == ["pod.oomkilled"]


def test_node_transitions() -> None:
    def nd(o: dict[str, Any] | None, n: dict[str, Any] | None) -> list[str]:
        return types(ev.diff_node(ev.node_state(o) if o else None,
                                  ev.node_state(n) if n else None))

    assert nd(node(), node(ready="Unknown")) == ["node.notready"]
    assert nd(node(ready="False"), node()) == ["node.ready"]
    assert nd(node(), node(unschedulable=True)) == ["node.cordoned"]
    assert nd(node(unschedulable=True), node()) == ["node.uncordoned"]
    assert nd(node(), node(ready="False", unschedulable=True)) == ["node.notready",
                                                                   "node.cordoned"]
    assert nd(None, node(ready="False")) == []
    assert nd(node(), None) == ["node.notready"]
    assert nd(node(), node()) == []


def knative_event(verb: str, obj: dict[str, Any], kind: str = "resource",
                  eid: str = "k1") -> ev.Event:
    return ev.Event(type=f"dev.knative.apiserver.{kind}.{verb}", source="https://api", id=eid,
                    data=obj)


def test_knative_pod_delete_maps_to_pod_deleted_and_evicted() -> None:
    (out,) = ev.map_knative(knative_event("delete", pod()))
    assert out.type == "dev.surefoot.pod.deleted"
    assert out.subject == "pod/default/p1"
    (out,) = ev.map_knative(knative_event("delete", pod(disruption="EvictionByEvictionAPI",
                                                        deleting=True)))
    assert out.type == "dev.surefoot.pod.evicted"


def test_knative_mapper_diffs_updates_against_last_state() -> None:
    m = ev.KnativeMapper()
    assert m.map(knative_event("add", pod(ready=False), eid="a")) == []
    (ready,) = m.map(knative_event("update", pod(ready=True), eid="b"))
    assert ready.type == "dev.surefoot.pod.ready"
    assert ready.id == "b.ready"
    assert m.map(knative_event("update", pod(ready=True), eid="c")) == []
    (d,) = m.map(knative_event("update", pod(deleting=True), eid="d"))
    assert d.type == "dev.surefoot.pod.deleted"
    assert m.map(knative_event("delete", pod(deleting=True), eid="e")) == []
    # Redelivery of the same Knative event maps to the same ids.
    m2 = ev.KnativeMapper()
    assert [e.id for e in m2.map(knative_event("delete", pod(), eid="x"))] == ["x.deleted"]


def test_knative_node_update_and_ref_events() -> None:
    m = ev.KnativeMapper()
    m.map(knative_event("add", node()))
    (c,) = m.map(knative_event("update", node(unschedulable=True), eid="n2"))
    assert c.type == "dev.surefoot.node.cordoned"
    assert c.subject == "node/n1"
    ref = {"kind": "Pod", "name": "p9", "namespace": "ns", "apiVersion": "v1", "uid": "u9"}
    (d,) = m.map(knative_event("delete", ref, kind="ref"))
    assert ev.payload_of(d) == ev.PodDeleted(namespace="ns", pod="p9", uid="u9")
    assert m.map(knative_event("update", ref, kind="ref")) == []
    assert m.map(knative_event("delete", {"kind": "ConfigMap", "name": "x"})) == []


def test_knative_ping_maps_to_checkpoint_requested() -> None:
    ping = ev.Event(type="dev.knative.sources.ping", source="/apis/v1/namespaces/default/"
                    "pingsources/ckpt", id="p1", data={"revision": "llm-00001"})
    (out,) = ev.map_knative(ping)
    assert ev.payload_of(out) == ev.CheckpointRequested(revision="llm-00001", reason="timer")
    (out,) = ev.map_knative(dataclasses.replace(ping, data=None))
    assert ev.payload_of(out).revision == "*"  # type: ignore[attr-defined]


def test_non_knative_events_pass_through() -> None:
    e = ev.build(ev.NodeReady(node="n"), source="/s")
    assert ev.map_knative(e) == [e]

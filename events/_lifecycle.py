"""Pod and node lifecycle as pure state diffs.

A watch event, a re-list after 410 Gone, a periodic sweep and a Knative ApiServerSource event
all reduce to "this object looked like *old* and now looks like *new*". These functions turn
such a pair into the catalog's payloads, with no I/O, so every path reports the same
transitions the same way and each rule is testable on plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events._catalog import (
    EventData,
    NodeCordoned,
    NodeNotReady,
    NodeReady,
    NodeUncordoned,
    PodCrashLoop,
    PodDeleted,
    PodEvicted,
    PodNotReady,
    PodOomKilled,
    PodReady,
    PodRestarted,
)

REVISION_LABEL = "serving.knative.dev/revision"
SERVICE_LABEL = "serving.knative.dev/service"
# DisruptionTarget condition reasons (Kubernetes >= 1.26) that mean "evicted", not "deleted".
EVICTION_REASONS = frozenset(
    {"EvictionByEvictionAPI", "PreemptionByScheduler", "DeletionByTaintManager",
     "TerminationByKubelet"}
)


@dataclass(frozen=True)
class ContainerState:
    name: str
    restart_count: int = 0
    waiting_reason: str = ""
    waiting_message: str = ""
    terminated_reason: str = ""
    terminated_exit_code: int | None = None
    last_terminated_reason: str = ""
    last_exit_code: int | None = None


@dataclass(frozen=True)
class PodState:
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""
    node: str | None = None
    revision: str | None = None
    service: str | None = None
    phase: str = ""
    ready: bool | None = None
    ready_reason: str = ""
    deleting: bool = False
    grace_period_seconds: int | None = None
    evicted_reason: str = ""
    evicted_message: str = ""
    containers: tuple[ContainerState, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeState:
    name: str
    uid: str = ""
    resource_version: str = ""
    ready_status: str | None = None  # "True", "False", "Unknown" or None (no condition yet)
    ready_reason: str = ""
    ready_message: str = ""
    unschedulable: bool = False

    @property
    def key(self) -> str:
        return self.name


def _get(obj: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(p)
    return obj


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in _get(obj, "status", "conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


def pod_state(obj: Mapping[str, Any]) -> PodState:
    """Reduce a Pod (the API's JSON as a dict) to what the diff rules look at."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    ready_cond = _condition(obj, "Ready")
    ready: bool | None = None
    ready_reason = ""
    if ready_cond is not None:
        ready = ready_cond.get("status") == "True"
        ready_reason = str(ready_cond.get("reason") or "")
    evicted_reason = ""
    evicted_message = ""
    if _get(obj, "status", "reason") == "Evicted":
        evicted_reason = "Evicted"
        evicted_message = str(_get(obj, "status", "message") or "")
    disruption = _condition(obj, "DisruptionTarget")
    if (
        not evicted_reason
        and disruption is not None
        and disruption.get("status") == "True"
        and disruption.get("reason") in EVICTION_REASONS
    ):
        evicted_reason = str(disruption.get("reason"))
        evicted_message = str(disruption.get("message") or "")
    containers = []
    for cs in _get(obj, "status", "containerStatuses") or ():
        if not isinstance(cs, Mapping):
            continue
        waiting = _get(cs, "state", "waiting") or {}
        terminated = _get(cs, "state", "terminated") or {}
        last = _get(cs, "lastState", "terminated") or {}
        containers.append(
            ContainerState(
                name=str(cs.get("name", "")),
                restart_count=int(cs.get("restartCount") or 0),
                waiting_reason=str(waiting.get("reason") or ""),
                waiting_message=str(waiting.get("message") or ""),
                terminated_reason=str(terminated.get("reason") or ""),
                terminated_exit_code=terminated.get("exitCode"),
                last_terminated_reason=str(last.get("reason") or ""),
                last_exit_code=last.get("exitCode"),
            )
        )
    grace = meta.get("deletionGracePeriodSeconds")
    return PodState(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        node=_get(obj, "spec", "nodeName"),
        revision=labels.get(REVISION_LABEL),
        service=labels.get(SERVICE_LABEL),
        phase=str(_get(obj, "status", "phase") or ""),
        ready=ready,
        ready_reason=ready_reason,
        deleting=bool(meta.get("deletionTimestamp")),
        grace_period_seconds=int(grace) if isinstance(grace, int) else None,
        evicted_reason=evicted_reason,
        evicted_message=evicted_message,
        containers=tuple(containers),
    )


def node_state(obj: Mapping[str, Any]) -> NodeState:
    """Reduce a Node to its Ready condition and cordon flag."""
    meta = obj.get("metadata") or {}
    ready = _condition(obj, "Ready")
    return NodeState(
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        ready_status=str(ready.get("status")) if ready is not None else None,
        ready_reason=str((ready or {}).get("reason") or ""),
        ready_message=str((ready or {}).get("message") or ""),
        unschedulable=bool(_get(obj, "spec", "unschedulable")),
    )


def _pod_common(s: PodState) -> dict[str, Any]:
    return {
        "namespace": s.namespace,
        "pod": s.name,
        "node": s.node,
        "revision": s.revision,
        "service": s.service,
        "uid": s.uid or None,
    }


def diff_pod(
    old: PodState | None,
    new: PodState | None,
    *,
    baseline: bool = False,
    missed: bool = False,
) -> list[EventData]:
    """Payloads for the transition old -> new (new None = the pod is gone).

    ``baseline``: ``old`` is None because this is the first look (start-up list), not because the
    pod was just created: report nothing, just learn the state. ``missed``: the change was seen by
    a re-list or sweep, not by the watch.
    """
    if new is None:
        if old is None or old.deleting or old.evicted_reason:
            return []  # already reported when deletion / eviction began
        return [PodDeleted(**_pod_common(old), missed=missed)]
    if old is None and baseline:
        return []
    out: list[EventData] = []
    common = _pod_common(new)
    if new.evicted_reason and not (old and old.evicted_reason):
        out.append(PodEvicted(**common, reason=new.evicted_reason, message=new.evicted_message))
    elif new.deleting and not (old and (old.deleting or old.evicted_reason)):
        out.append(
            PodDeleted(
                **common,
                terminating=True,
                grace_period_seconds=new.grace_period_seconds,
                missed=missed,
            )
        )
    before = {c.name: c for c in old.containers} if old else {}
    for c in new.containers:
        prev = before.get(c.name)
        restarted = prev is not None and c.restart_count > prev.restart_count
        if restarted:
            if c.last_terminated_reason == "OOMKilled":
                out.append(
                    PodOomKilled(
                        **common, container=c.name, restart_count=c.restart_count,
                        exit_code=c.last_exit_code,
                    )
                )
            else:
                out.append(
                    PodRestarted(
                        **common, container=c.name, restart_count=c.restart_count,
                        reason=c.last_terminated_reason, exit_code=c.last_exit_code,
                    )
                )
        elif c.terminated_reason == "OOMKilled" and (
            prev is None or prev.terminated_reason != "OOMKilled"
        ):
            out.append(
                PodOomKilled(
                    **common, container=c.name, restart_count=c.restart_count,
                    exit_code=c.terminated_exit_code,
                )
            )
        if c.waiting_reason == "CrashLoopBackOff" and (
            prev is None or prev.waiting_reason != "CrashLoopBackOff"
        ):
            out.append(
                PodCrashLoop(
                    **common, container=c.name, restart_count=c.restart_count,
                    message=c.waiting_message,
                )
            )
    was_ready = bool(old and old.ready)
    if new.ready and not was_ready:
        out.append(PodReady(**common))
    elif was_ready and not new.ready:
        out.append(PodNotReady(**common, reason=new.ready_reason))
    return out


def diff_node(
    old: NodeState | None, new: NodeState | None, *, baseline: bool = False
) -> list[EventData]:
    """Payloads for a node's transition: NotReady / Ready, cordoned / uncordoned, deleted."""
    if new is None:
        if old is None:
            return []
        return [NodeNotReady(node=old.name, status="Deleted", reason="NodeDeleted")]
    if old is None:
        # A node that appears (or is first seen) has no transition to report.
        return []
    out: list[EventData] = []
    if old.ready_status == "True" and new.ready_status != "True":
        out.append(
            NodeNotReady(
                node=new.name,
                status=new.ready_status or "Unknown",
                reason=new.ready_reason,
                message=new.ready_message,
            )
        )
    elif old.ready_status != "True" and new.ready_status == "True":
        out.append(NodeReady(node=new.name))
    if new.unschedulable and not old.unschedulable:
        out.append(NodeCordoned(node=new.name))
    elif old.unschedulable and not new.unschedulable:
        out.append(NodeUncordoned(node=new.name))
    return out


def event_id(kind: str, state: PodState | NodeState, payload: EventData, *extra: object) -> str:
    """A deterministic id: the same transition seen twice (watch and sweep) has the same id."""
    short = payload.TYPE.rsplit(".", 1)[-1]
    ident = state.uid or state.key
    tail = ":".join(str(x) for x in extra if x not in (None, ""))
    container = getattr(payload, "container", "")
    parts = [kind, ident, short, state.resource_version or "0"]
    if container:
        parts.append(str(container))
    if tail:
        parts.append(tail)
    return ":".join(parts)

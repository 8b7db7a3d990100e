"""Knative's own events, mapped onto the Surefoot catalog.

On a cluster, an ApiServerSource (``dev.knative.apiserver.resource.*`` / ``ref.*``) can watch pods
and nodes instead of ``surefoot source pods``, and a PingSource (``dev.knative.sources.ping``)
can be the checkpoint timer. Consumers only want to understand Surefoot types, so this module
translates: a pod delete becomes ``pod.deleted`` (or ``pod.evicted``), an update is diffed against
the last state seen for that object, a ping becomes ``checkpoint.requested``. Mapped events get
ids derived from the original id, so a redelivered Knative event maps to the same ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from events._catalog import (
    KNATIVE_APISERVER_PREFIXES,
    KNATIVE_PING,
    CheckpointRequested,
    Event,
    EventData,
    NodeNotReady,
    PodDeleted,
    PodEvicted,
    build,
)
from events._lifecycle import (
    NodeState,
    PodState,
    diff_node,
    diff_pod,
    node_state,
    pod_state,
)

ORIGIN_EXTENSION = "origintype"  # the Knative type an event was mapped from
ALL_REVISIONS = "*"


def is_knative(event: Event) -> bool:
    return event.type == KNATIVE_PING or event.type.startswith(KNATIVE_APISERVER_PREFIXES)


class KnativeMapper:
    """Maps Knative events to Surefoot events, remembering the last state of each object.

    Thread-safety: callers serialize (the receiver holds one mapper per app, used under its
    own lock). ``max_objects`` bounds the memory; the oldest entries go first.
    """

    def __init__(self, max_objects: int = 10_000) -> None:
        self._max = max_objects
        self._pods: OrderedDict[str, PodState] = OrderedDict()
        self._nodes: OrderedDict[str, NodeState] = OrderedDict()

    def map(self, event: Event) -> list[Event]:
        """Surefoot events for ``event``; [] for Knative events that mean nothing to us.
        A non-Knative event is returned unchanged (as a one-item list)."""
        if event.type == KNATIVE_PING:
            return [_emit(event, _ping_payload(event.data), 0)]
        if not event.type.startswith(KNATIVE_APISERVER_PREFIXES):
            return [event]
        verb = event.type.rsplit(".", 1)[-1]
        data = event.data if isinstance(event.data, Mapping) else {}
        if event.type.startswith("dev.knative.apiserver.ref."):
            payloads = self._map_ref(verb, data)
        else:
            payloads = self._map_resource(verb, data)
        return [_emit(event, p, i) for i, p in enumerate(payloads)]

    def _map_resource(self, verb: str, obj: Mapping[str, Any]) -> list[EventData]:
        kind = obj.get("kind")
        if kind == "Pod":
            new = pod_state(obj)
            key = new.uid or new.key
            old = self._pods.get(key)
            if verb == "delete":
                self._pods.pop(key, None)
                if old is not None:
                    return diff_pod(old, None)
                # Never saw it before: the deleted object itself says how it ended.
                if new.evicted_reason:
                    return [PodEvicted(**_common(new), reason=new.evicted_reason,
                                       message=new.evicted_message)]
                return [PodDeleted(**_common(new))]
            self._remember(self._pods, key, new)
            return diff_pod(old, new)
        if kind == "Node":
            new_node = node_state(obj)
            old_node = self._nodes.get(new_node.name)
            if verb == "delete":
                self._nodes.pop(new_node.name, None)
                return diff_node(old_node or new_node, None)
            self._remember(self._nodes, new_node.name, new_node)
            return diff_node(old_node, new_node)
        return []

    @staticmethod
    def _map_ref(verb: str, ref: Mapping[str, Any]) -> list[EventData]:
        # A reference carries no state: only a delete means something on its own.
        if verb != "delete":
            return []
        if ref.get("kind") == "Pod" and ref.get("name"):
            return [
                PodDeleted(
                    namespace=str(ref.get("namespace") or "default"),
                    pod=str(ref["name"]),
                    uid=str(ref.get("uid")) if ref.get("uid") else None,
                )
            ]
        if ref.get("kind") == "Node" and ref.get("name"):
            return [NodeNotReady(node=str(ref["name"]), status="Deleted", reason="NodeDeleted")]
        return []

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)


def _common(s: PodState) -> dict[str, Any]:
    return {"namespace": s.namespace, "pod": s.name, "node": s.node, "revision": s.revision,
            "service": s.service, "uid": s.uid or None}


def _ping_payload(data: Any) -> CheckpointRequested:
    d = data if isinstance(data, Mapping) else {}
    revision = d.get("revision")
    pod = d.get("pod")
    namespace = d.get("namespace")
    return CheckpointRequested(
        revision=str(revision) if revision else (None if pod else ALL_REVISIONS),
        pod=str(pod) if pod else None,
        namespace=str(namespace) if namespace else None,
        reason=str(d.get("reason") or "timer"),
    )


def _emit(origin: Event, payload: EventData, index: int) -> Event:
    short = payload.TYPE.rsplit(".", 1)[-1]
    suffix = f"{short}" if index == 0 else f"{short}.{index}"
    return build(
        payload,
        source=origin.source,
        id=f"{origin.id}.{suffix}",
        time=origin.time,
        extensions={**origin.extensions, ORIGIN_EXTENSION: origin.type},
    )


def map_knative(event: Event) -> list[Event]:
    """Stateless mapping (no memory of earlier states): updates are compared with nothing."""
    return KnativeMapper(max_objects=1).map(event)

"""Where the local platform places a replica, and why it cannot when it cannot.

Required anti-affinity: at most one replica of a revision per node (a terminating one still
counts, as it holds its node until it is gone); cordoned and not-ready nodes take no new
replica. Among the nodes left, a revision other than the service's primary prefers a node that
holds no primary replica (a fault of that node then takes one replica, not both kinds), then
the least loaded node. A replica that fits nowhere stays Pending with the reason in words, as
the scheduler's ``FailedScheduling`` says it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from knative.platforms.local._records import NodeRecord, ReplicaRecord, RevisionSpec

PRIMARY_TAG = "primary"


def placeable(nodes: Mapping[str, NodeRecord], replicas: Iterable[ReplicaRecord],
              spec: RevisionSpec, specs: Mapping[str, RevisionSpec]) -> list[NodeRecord]:
    """The nodes a new replica of ``spec`` may go to, best first."""
    replicas = list(replicas)
    used = {r.node for r in replicas if r.revision == spec.name and r.node}
    load = dict.fromkeys(nodes, 0)
    primary = dict.fromkeys(nodes, 0)
    for r in replicas:
        if r.node in load:
            load[r.node] += 1
            other = specs.get(r.revision)
            if (other is not None and other.service == spec.service and other.tag == PRIMARY_TAG
                    and r.phase != "Terminating"):
                primary[r.node] += 1
    avoid_primary = spec.tag != PRIMARY_TAG
    ok = [n for n in nodes.values() if n.ready and not n.unschedulable and n.name not in used]
    return sorted(ok, key=lambda n: (primary[n.name] if avoid_primary else 0, load[n.name],
                                     n.name))


def pending_reason(nodes: Mapping[str, NodeRecord], replicas: Iterable[ReplicaRecord],
                   spec: RevisionSpec) -> str:
    """Why no node takes a replica of ``spec``, in the scheduler's words."""
    holders: dict[str, str] = {}
    for r in replicas:
        if r.revision == spec.name and r.node:
            holders.setdefault(r.node, r.name)
    cordoned = [n.name for n in nodes.values() if n.unschedulable]
    not_ready = [n.name for n in nodes.values() if not n.ready and not n.unschedulable]
    taken = [n for n in nodes if n in holders and n not in cordoned and n not in not_ready]
    parts = []
    if cordoned:
        parts.append(f"{len(cordoned)} cordoned ({', '.join(cordoned)})")
    if not_ready:
        parts.append(f"{len(not_ready)} not ready ({', '.join(not_ready)})")
    if taken:
        parts.append(f"{len(taken)} already hold a replica of {spec.name}, anti-affinity ("
                     + ", ".join(f"{n}: {holders[n]}" for n in taken) + ")")
    return f"0/{len(nodes)} nodes available: " + "; ".join(parts or ["no nodes"])

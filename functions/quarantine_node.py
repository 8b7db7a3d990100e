"""quarantine_node: take a node with a broken GPU out of service, carefully.

After a fatal GPU fault the node is labelled ``<quarantine_label>=true`` (so operators and
tools can see why), cordoned (no new pods) and drained through the Eviction API (the platform
honours PodDisruptionBudgets: a 429 is retried with backoff until the drain timeout, DaemonSet
and mirror pods are skipped). It is careful in four ways:

- **scale-aware**: the drain must leave at least ``primary_min_ready`` ready replicas of the
  primary revision on other nodes, unless the node is already lost (``gpu.lost``, XID 79, or the
  node is NotReady — its replicas serve nothing anyway). Otherwise the node stays labelled and
  cordoned and the drain is deferred and retried by the sweep;
- **never the last**: a node that holds the only ready replicas of a revision (primary or
  fallback) is left in service, and the quarantine is retried by the sweep until that revision
  has a ready replica elsewhere — cordoning it would leave the revision nothing to serve with;
- **capped**: at most ``max_quarantined`` nodes at once and at most ``max_quarantined_percent``
  of the GPU nodes (at least one node) out of service, counting the nodes cordoned for any
  other reason (an operator's drain) with those Surefoot quarantined, which a Lua script
  admits a node to atomically — a storm of faults on top of repairs cannot drain the cluster;
- **opt-out**: a node labelled ``optout_label`` (``surefoot.dev/quarantine=disabled``) is left
  alone; **dry-run** reports what would be done (``node.quarantined`` with ``dry_run: true``);
- **release**: ``gpu.healthy`` releases (uncordon, unlabel) after ``release_hold_s`` unless a new
  fault arrives first; an operator releases at once with ``surefoot release NODE``.

Benign XIDs (43, 45, ...) and non-fatal ones do nothing. Replies: ``node.quarantined``,
``node.released``.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager

from events import (
    KNATIVE_PING,
    Event,
    GpuEcc,
    GpuHealthy,
    GpuLost,
    GpuXid,
    NodeQuarantined,
    NodeReleased,
    payload_of,
)
from functions._common import check_type, merge, run_deferred
from functions._context import ACTED, DEFERRED, DRY_RUN, NOOP, Context, Outcome
from functions._errors import MAPPED, PermanentFunctionError, map_error
from functions._faults import Fault, assess
from functions._once import once
from functions._state import admit, cancel, defer, discharge, locked, quarantined
from knative import Node, PermanentPlatformError
from knative.breakers import node_key

log = logging.getLogger(__name__)

NAME = "quarantine_node"
FAULT_TYPES = (GpuXid.TYPE, GpuEcc.TYPE, GpuLost.TYPE)
TYPES = (*FAULT_TYPES, GpuHealthy.TYPE, KNATIVE_PING)


def _member(action: str, node: str) -> str:
    return f"{NAME}|{action}|{node}"


def _meta_key(ctx: Context, node: str) -> str:
    return ctx.key("quarantine", node)


@once(NAME)
def handle(event: Event, ctx: Context) -> Outcome:
    """Handle one event (idempotent by event id)."""
    check_type(NAME, event, TYPES)
    try:
        if event.type == KNATIVE_PING:
            return merge(NAME, sweep(ctx), "nothing due")
        if event.type == GpuHealthy.TYPE:
            p = payload_of(event)
            assert isinstance(p, GpuHealthy)
            return _healthy(ctx, p.node, event.id)
        fault = assess(event)
        if fault is None:
            return Outcome(NAME, NOOP, f"{event.type} is not a fatal fault; nothing quarantined")
        return quarantine(ctx, fault, cause_event_id=event.id)
    except MAPPED as exc:
        raise map_error(exc, f"{NAME} {event.type} {event.id}") from exc


def cap_for(ctx: Context, nodes: list[Node]) -> int:
    """How many nodes may be quarantined at once given the cluster's GPU nodes."""
    s = ctx.settings
    label = s.gpu_label
    gpu = [n for n in nodes if label and n.labels.get(label[0]) == label[1]] or nodes
    by_share = math.floor(len(gpu) * s.max_quarantined_percent / 100 + 1e-9)
    return max(1, min(s.max_quarantined, by_share))


def _find(nodes: list[Node], name: str) -> Node | None:
    return next((n for n in nodes if n.name == name), None)


def cordoned_elsewhere(ctx: Context, nodes: list[Node], name: str, members: list[str]) -> list[str]:
    """GPU nodes other than ``name`` that are cordoned for a reason of their own (an operator's
    drain, a repair): they are out of service as much as a quarantined node, so they count
    against the caps."""
    label = ctx.settings.gpu_label
    gpu = [n for n in nodes if label and n.labels.get(label[0]) == label[1]] or nodes
    return sorted(n.name for n in gpu
                  if n.unschedulable and n.name != name and n.name not in members)


def last_ready_here(ctx: Context, name: str) -> list[str]:
    """The revisions whose only ready replicas are on ``name`` (nodes quarantined by Surefoot,
    which are being drained, do not count as elsewhere): cordoning it would leave them none."""
    s = ctx.settings
    leaving = set(quarantined(ctx))
    by_rev: dict[str, set[str]] = {}
    for r in ctx.platform.replicas(s.service):
        if r.ready and r.node and (r.node == name or r.node not in leaving):
            by_rev.setdefault(r.revision, set()).add(r.node)
    return sorted(rev for rev, where in by_rev.items() if where == {name})


def _hold(ctx: Context, fault: Fault, revisions: list[str], cause_event_id: str | None) -> Outcome:
    """Leave ``fault.node`` in service (it holds the last ready replica of ``revisions``) and
    try again later: the quarantine goes ahead once they have a ready replica elsewhere."""
    s = ctx.settings
    first = not ctx.redis.exists(_held_key(ctx, fault.node))
    ctx.redis.hset(_held_key(ctx, fault.node), mapping={
        "reason": fault.reason, "lost": "1" if fault.lost else "0",
        "cause": cause_event_id or ""})
    defer(ctx, _member("fault", fault.node), ctx.clock() + s.drain_retry_s)
    text = (f"node {fault.node} left in service: it holds the last ready replica of "
            f"{', '.join(revisions)} ({fault.reason}); retrying in {s.drain_retry_s:g}s")
    log.log(logging.WARNING if first else logging.DEBUG, "%s", text)  # once, not per retry
    return Outcome(NAME, DEFERRED, text, details={"last_ready": revisions})


def _capped(ctx: Context, name: str, count: int, cap: int, others: list[str]) -> Outcome:
    held = ", ".join(quarantined(ctx) + [f"{o} (cordoned, not by Surefoot)" for o in others])
    log.warning("node %s not quarantined: %d of %d nodes are out of service already (%s)",
                name, count, cap, held)
    return Outcome(NAME, NOOP, f"cap reached: {count} of {cap} nodes out of service ({held}); "
                               f"node {name} left in service", details={"capped": True})


def _held_key(ctx: Context, node: str) -> str:
    return ctx.key("quarantine-held", node)


def _on_node(ctx: Context, node: str) -> tuple[list[str], int, int]:
    """Replicas on ``node``; ready primary replicas elsewhere; ready primary replicas on it."""
    s = ctx.settings
    replicas = ctx.platform.replicas(s.service)
    here = sorted(r.name for r in replicas if r.node == node)
    primary = [r for r in replicas if r.revision == s.primary_revision and r.ready]
    elsewhere = sum(1 for r in primary if r.node != node)
    return here, elsewhere, len(primary) - elsewhere


def _node_lock(ctx: Context, name: str) -> AbstractContextManager[None]:
    """One quarantine or release of a node at a time (a drain can take the drain timeout)."""
    s = ctx.settings
    return locked(ctx, f"node:{name}", ttl_s=s.drain_timeout_s + 60, wait_s=s.inflight_wait_s)


def quarantine(ctx: Context, fault: Fault, *, cause_event_id: str | None = None) -> Outcome:
    """Label, cordon and drain ``fault.node`` within the caps (see the module doc)."""
    cancel(ctx, _member("release", fault.node))
    with _node_lock(ctx, fault.node):
        return _quarantine(ctx, fault, cause_event_id)


def _quarantine(ctx: Context, fault: Fault, cause_event_id: str | None) -> Outcome:
    s = ctx.settings
    name = fault.node
    nodes = ctx.platform.nodes()
    node = _find(nodes, name)
    if node is None:
        return Outcome(NAME, NOOP, f"node {name} does not exist")
    optout = s.optout
    if optout and node.labels.get(optout[0]) == optout[1]:
        log.warning("node %s has a fatal GPU fault (%s) but is opted out (%s=%s)", name,
                    fault.reason, *optout)
        return Outcome(NAME, NOOP, f"node {name} is opted out ({s.optout_label})")
    labelled = node.labels.get(s.quarantine_label) == "true"
    members = quarantined(ctx)
    if labelled and node.unschedulable and name in members:
        return Outcome(NAME, NOOP, f"node {name} is already quarantined")
    cap = cap_for(ctx, nodes)
    existing = {n.name for n in nodes}
    forget = [m for m in members if m not in existing]
    others = cordoned_elsewhere(ctx, nodes, name, members)
    lost = fault.lost or not node.ready
    if s.dry_run:
        return _dry_run(ctx, fault, node, cap, forget, lost, cause_event_id)
    adm = admit(ctx, name, cap, check_only=True, forget=forget, others=len(others))
    if adm.verdict == "capped":
        return _capped(ctx, name, adm.count, cap, others)
    last = [] if name in members else last_ready_here(ctx, name)
    if last:
        return _hold(ctx, fault, last, cause_event_id)
    adm = admit(ctx, name, cap, others=len(others))
    if adm.verdict == "capped":
        return _capped(ctx, name, adm.count, cap, others)
    cancel(ctx, _member("fault", name))
    ctx.redis.delete(_held_key(ctx, name))
    try:
        ctx.platform.label(name, s.quarantine_label, "true")
        ctx.platform.cordon(name)
    except PermanentPlatformError:
        discharge(ctx, name)  # it was never quarantined: give its place back
        raise
    ctx.redis.hset(_meta_key(ctx, name), mapping={
        "since": repr(ctx.clock()), "reason": fault.reason, "cause": cause_event_id or "",
        "lost": "1" if lost else "0"})
    evicted, note = drain(ctx, name, lost)
    reply = ctx.event(NAME, NodeQuarantined(
        node=name, reason=f"{fault.reason}; {note}", cause_event_id=cause_event_id,
        evicted_pods=evicted))
    return Outcome(NAME, ACTED, f"quarantined node {name}: {note}", reply=reply,
                   details={"evicted": list(evicted), "cap": cap})


def _dry_run(ctx: Context, fault: Fault, node: Node, cap: int, forget: list[str], lost: bool,
             cause_event_id: str | None) -> Outcome:
    s = ctx.settings
    others = cordoned_elsewhere(ctx, ctx.platform.nodes(), node.name, quarantined(ctx))
    adm = admit(ctx, node.name, cap, check_only=True, forget=forget, others=len(others))
    here, elsewhere, primary_here = _on_node(ctx, node.name)
    last = last_ready_here(ctx, node.name)
    pods: tuple[str, ...] = ()
    if last:
        plan = f"would leave it in service: the last ready replica of {', '.join(last)}"
    elif adm.verdict == "capped":
        plan = f"would not quarantine: cap reached ({adm.count} of {cap})"
    elif primary_here and not lost and elsewhere < s.primary_min_ready:
        plan = (f"would label and cordon, and defer the drain ({elsewhere} ready primary "
                f"replicas elsewhere, minimum {s.primary_min_ready})")
    else:
        plan = f"would label, cordon and drain ({len(here)} pods)"
        pods = tuple(here)
    reply = ctx.event(NAME, NodeQuarantined(
        node=node.name, reason=f"dry run: {fault.reason}; {plan}", cause_event_id=cause_event_id,
        dry_run=True, evicted_pods=pods))
    return Outcome(NAME, DRY_RUN, f"dry run: node {node.name}: {plan}", reply=reply)


def drain(ctx: Context, name: str, lost: bool) -> tuple[tuple[str, ...], str]:
    """Evict the node's pods if that keeps the primary's minimum; else defer. Returns the pods
    evicted and a line saying what happened."""
    s = ctx.settings
    _, elsewhere, primary_here = _on_node(ctx, name)
    if primary_here and not lost and elsewhere < s.primary_min_ready:
        defer(ctx, _member("drain", name), ctx.clock() + s.drain_retry_s)
        return (), (f"drain deferred: {elsewhere} ready primary replicas would remain "
                    f"(minimum {s.primary_min_ready})")
    report = ctx.platform.evict(name, timeout=s.drain_timeout_s)
    note = f"drained: {len(report.evicted)} evicted, {len(report.skipped)} skipped"
    if report.refused:
        defer(ctx, _member("drain", name), ctx.clock() + s.drain_retry_s)
        note += f", {len(report.refused)} refused by disruption budgets (retrying)"
    else:
        cancel(ctx, _member("drain", name))
    return report.evicted, note


def _healthy(ctx: Context, name: str, cause_event_id: str) -> Outcome:
    s = ctx.settings
    node = _find(ctx.platform.nodes(), name)
    ours = name in quarantined(ctx) or (
        node is not None and node.labels.get(s.quarantine_label) == "true")
    if not ours:
        if cancel(ctx, _member("fault", name)):
            ctx.redis.delete(_held_key(ctx, name))
            return Outcome(NAME, NOOP, f"node {name} is healthy again; its held quarantine "
                                       "is dropped")
        return Outcome(NAME, NOOP, f"node {name} is not quarantined")
    if s.release_hold_s <= 0:
        return release(ctx, name, reason="GPU healthy", cause_event_id=cause_event_id)
    due = ctx.clock() + s.release_hold_s
    defer(ctx, _member("release", name), due)
    return Outcome(NAME, DEFERRED, f"node {name} is released in {s.release_hold_s:g}s unless a "
                                   "new fault arrives", details={"due": due})


def release(ctx: Context, name: str, *, reason: str = "released by an operator",
            cause_event_id: str | None = None) -> Outcome:
    """Uncordon and unlabel a quarantined node and give its place in the cap back."""
    try:
        with _node_lock(ctx, name):
            return _release(ctx, name, reason, cause_event_id)
    except MAPPED as exc:
        raise map_error(exc, f"{NAME}: release node {name}") from exc


def _release(ctx: Context, name: str, reason: str, cause_event_id: str | None) -> Outcome:
    s = ctx.settings
    cancel(ctx, _member("release", name))
    cancel(ctx, _member("drain", name))
    cancel(ctx, _member("fault", name))
    ctx.redis.delete(_held_key(ctx, name))
    node = _find(ctx.platform.nodes(), name)
    member = name in quarantined(ctx)
    if node is None:
        if member:
            discharge(ctx, name)
            ctx.redis.delete(_meta_key(ctx, name))
            return Outcome(NAME, NOOP, f"node {name} no longer exists; forgotten")
        raise PermanentFunctionError(f"node {name!r} does not exist")
    if not member and node.labels.get(s.quarantine_label) != "true":
        return Outcome(NAME, NOOP, f"node {name} is not quarantined")
    if s.dry_run:
        reply = ctx.event(NAME, NodeReleased(node=name, reason=f"dry run: would uncordon and "
                                             f"unlabel ({reason})",
                                             cause_event_id=cause_event_id))
        return Outcome(NAME, DRY_RUN, f"dry run: would release node {name}", reply=reply)
    ctx.platform.uncordon(name)
    ctx.platform.label(name, s.quarantine_label, None)
    discharge(ctx, name)
    ctx.redis.delete(_meta_key(ctx, name))
    reply = ctx.event(NAME, NodeReleased(node=name, reason=reason, cause_event_id=cause_event_id))
    return Outcome(NAME, ACTED, f"released node {name}", reply=reply)


def status(ctx: Context) -> list[dict[str, str]]:
    """The quarantined nodes with when and why (for ``surefoot status`` and the admin API)."""
    out = []
    for name in quarantined(ctx):
        raw = ctx.redis.hgetall(_meta_key(ctx, name))
        meta = {(k.decode() if isinstance(k, bytes) else k):
                (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        out.append({"node": name, **meta})
    return out


def readmit(ctx: Context) -> list[Outcome]:
    """Nodes the platform labels quarantined that Redis does not hold (it came back empty):
    the label is their durable home, so they go back into the quarantined set, and their node
    breaker is opened again if Redis lost it. The set is read before the nodes: a release
    unlabels before it discharges, so a node being released is never taken back."""
    members = set(quarantined(ctx))
    label = ctx.settings.quarantine_label
    out = []
    for node in ctx.platform.nodes():
        if node.labels.get(label) != "true" or node.name in members:
            continue
        ctx.redis.sadd(ctx.key("quarantined"), node.name)
        ctx.redis.hset(_meta_key(ctx, node.name), "restored", "from the node label")
        key = node_key(node.name)
        if ctx.breakers.status(key).state == "closed":
            ctx.breakers.open(key, "node quarantined (restored from its label)")
        out.append(Outcome(NAME, ACTED, f"node {node.name}: quarantine restored from its label"))
    return out


def sweep(ctx: Context) -> list[Outcome]:
    """Restore quarantines Redis lost, run the due releases and the deferred drains."""
    def run_release(name: str) -> Outcome:
        return release(ctx, name, reason=f"GPU healthy for {ctx.settings.release_hold_s:g}s")

    def run_drain(name: str) -> Outcome:
        try:
            node = _find(ctx.platform.nodes(), name)
            if node is None or node.labels.get(ctx.settings.quarantine_label) != "true":
                return Outcome(NAME, NOOP, f"node {name} is no longer quarantined; drain dropped")
            lost = not node.ready or ctx.redis.hget(_meta_key(ctx, name), "lost") == b"1"
            evicted, note = drain(ctx, name, lost)
        except MAPPED as exc:
            raise map_error(exc, f"{NAME}: drain node {name}") from exc
        if not evicted:
            return Outcome(NAME, DEFERRED if "deferred" in note or "retrying" in note else NOOP,
                           f"node {name}: {note}")
        reply = ctx.event(NAME, NodeQuarantined(node=name, reason=note, evicted_pods=evicted))
        return Outcome(NAME, ACTED, f"node {name}: {note}", reply=reply)

    def run_fault(name: str) -> Outcome:
        raw = ctx.redis.hgetall(_held_key(ctx, name))
        meta = {(k.decode() if isinstance(k, bytes) else k):
                (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        if not meta:
            return Outcome(NAME, NOOP, f"node {name}: no held fault")
        fault = Fault(name, str(meta.get("reason", "GPU fault")), lost=meta.get("lost") == "1")
        try:
            return quarantine(ctx, fault, cause_event_id=str(meta.get("cause") or "") or None)
        except MAPPED as exc:
            raise map_error(exc, f"{NAME}: quarantine node {name}") from exc

    return (readmit(ctx) + run_deferred(ctx, NAME, "release", run_release)
            + run_deferred(ctx, NAME, "drain", run_drain)
            + run_deferred(ctx, NAME, "fault", run_fault))

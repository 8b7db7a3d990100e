"""reroute_traffic: move the primary's share of traffic to the fallback revision and back.

The durable path behind the breakers. When the primary revision's breaker opens, the fallback
takes the primary's share in the service's traffic block; the primary stays in the list at 0%
with its tag, because Knative scales a revision that leaves the list to zero and the primary
must stay warm (and reachable through its tag) to come back. The fallback's min-scale goes up
by ``fallback_boost`` to absorb the load, first: the share moves once the fallback has that
many ready replicas (waited for up to ``fallback_ready_timeout_s``, then moved anyway; at once
when the primary has no ready replica left). The split before the reroute is kept in Redis.

When the breaker goes half-open, the primary gets the first step (e.g. 10%): a revision at 0%
gets no requests, so without it the gateways would have nothing to probe the primary with and
its breaker would never close. When the breaker closes, traffic goes back in steps
(``restore_steps``, percent of the primary's normal share, e.g. 10 -> 50 -> 100) with
``restore_step_wait_s`` between them (the context's sleep, so tests do not wait). Before every
step the primary must have
``restore_min_ready`` ready replicas on nodes whose breaker is not open (waited for up to
``restore_health_timeout_s``); if it does not, the traffic goes back to the fallback and the
restore is retried later (a deferred action). A newer breaker event supersedes a restore in
progress (a per-service epoch in Redis), and the primary's share never goes down during a
restore. Every traffic change holds a per-service Redis lock (a merge patch replaces the whole
list) and re-reads on 409.

Traffic never moves onto a revision without a ready replica (on a node whose breaker is not
open): a reroute to a fallback that has none leaves the share where it is and says so, and
when neither revision has one the traffic is left as it is (logged). A node's breaker opening
normally needs nothing here (the gateways route around the node), but if it leaves the primary
with fewer than ``primary_min_ready`` ready replicas on healthy nodes, the primary cannot carry
its share: the pair's share is split in proportion to each revision's ready replicas (a
capacity reroute), undone once capacity is back (on a node breaker closing or half-opening, or
by the sweep).

The sweep (every ``sweep_interval_s``, and on a ping) repairs what lost events missed and
follows capacity as it changes (``reconcile``): a primary whose breaker is open but still has a
share is rerouted, a half-open one without a share gets its trial, a closed one still rerouted
is restored (unless a restore runs or is due), a capacity split follows the ready counts, and a
fallback that lost its last ready replica hands the share back to the primary.

KServe: an InferenceService reconciles its Knative Service's traffic back, so with
``kserve_isvc`` set the same two moves go through its ``canaryTrafficPercent`` (0 sends
everything to the previously rolled-out revision; the restore raises it step by step).

Replies: ``traffic.rerouted``; ``traffic.restored`` for the trial step and per restore step
(the last one in the reply, the earlier ones to the sink as they happen).
"""

from __future__ import annotations

import functools
import logging

from events import (
    KNATIVE_PING,
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    Event,
    TrafficRerouted,
    TrafficRestored,
    payload_of,
)
from functions._capacity import OPEN_STATES, capacity, healthy_ready
from functions._common import check_type, merge, run_deferred
from functions._context import ACTED, DEFERRED, NOOP, Context, Outcome
from functions._errors import MAPPED, map_error
from functions._kserve import canary_of, reroute_canary, restore_canary, saved_canary_key
from functions._once import once
from functions._split import (
    decode,
    encode,
    find,
    is_target,
    percent_of,
    rerouted_split,
    restored_split,
    wire,
)
from functions._state import cancel, defer, deferred_at, locked
from functions._traffic import (
    TRIPPED,
    apply,
    cause_key,
    current_epoch,
    epoch_key,
    fallback_low,
    fallback_scale,
    rebalance,
    restore_member,
    restoring_key,
    restoring_ms,
    saved_key,
    stay,
)
from knative import Target
from knative.breakers import revision_key

log = logging.getLogger(__name__)

NAME = "reroute_traffic"
TYPES = (BreakerOpened.TYPE, BreakerHalfOpened.TYPE, BreakerClosed.TYPE, KNATIVE_PING)
_OPEN_STATES = OPEN_STATES

__all__ = ["NAME", "TYPES", "handle", "primary_health", "rebalance", "reconcile", "reroute",
           "rerouted_split", "restore", "restored_split", "sweep", "trial"]


@once(NAME)
def handle(event: Event, ctx: Context) -> Outcome:
    """Handle one event (idempotent by event id)."""
    check_type(NAME, event, TYPES)
    try:
        if event.type == KNATIVE_PING:
            return merge(NAME, sweep(ctx), "no restore due")
        p = payload_of(event)
        assert isinstance(p, (BreakerOpened, BreakerHalfOpened, BreakerClosed))
        s = ctx.settings
        if p.scope == "node":
            if isinstance(p, BreakerOpened):
                return capacity_check(ctx, node=p.name, cause_event_id=event.id)
            return capacity_restore(ctx)
        if p.name != s.primary_revision:
            return Outcome(NAME, NOOP, f"revision {p.name} is not the primary "
                                       f"({s.primary_revision})")
        if isinstance(p, BreakerOpened):
            ctx.redis.set(cause_key(ctx), "breaker")
            return reroute(ctx, reason=p.reason or "primary breaker opened",
                           cause_event_id=event.id)
        if isinstance(p, BreakerHalfOpened):
            return trial(ctx, reason=p.reason or "primary breaker half-open")
        return restore(ctx, reason=p.reason or "primary breaker closed")
    except MAPPED as exc:
        raise map_error(exc, f"{NAME} {event.type} {event.id}") from exc


# --- reroute ------------------------------------------------------------------------------


def _ready_fallback(ctx: Context) -> int:
    s = ctx.settings
    return sum(1 for r in ctx.platform.replicas(s.service)
               if r.revision == s.fallback_revision and r.ready)


def _wait_fallback_ready(ctx: Context, epoch: int) -> tuple[bool, str]:
    """Wait (up to ``fallback_ready_timeout_s``) for the fallback to have its boosted
    min-scale of ready replicas before it takes the primary's share; at once when the primary
    has no ready replica left (nothing would serve in the meantime), and not at all when the
    fallback has none (the share stays; the sweep moves it once one is ready).
    (superseded, note)."""
    s = ctx.settings
    want = fallback_low(ctx, boosted=True) - s.fallback_standby  # the spares are not waited for
    primary, _ = primary_health(ctx)
    if primary == 0:
        return False, "; the primary has no ready replica: moved at once"
    deadline = ctx.clock() + s.fallback_ready_timeout_s
    while True:
        ready = _ready_fallback(ctx)
        if ready == 0:
            return False, ""
        if ready >= want:
            return False, f"; fallback had {ready} ready replicas"
        if current_epoch(ctx) != epoch:
            return True, ""
        if ctx.clock() >= deadline:
            return False, (f"; fallback had {ready} of {want} ready replicas after "
                           f"{s.fallback_ready_timeout_s:g}s, moved anyway")
        ctx.sleep(s.restore_health_poll_s)


def _primary_share(ctx: Context) -> int:
    """The primary's percent; a permanent error when the service does not route to it."""
    s = ctx.settings
    current = ctx.platform.traffic(s.service)
    rerouted_split(current, s)  # raises when the primary is not in the traffic
    return percent_of(current, s.primary_revision, s.primary_tag)


def reroute(ctx: Context, *, reason: str, cause_event_id: str | None = None) -> Outcome:
    """Send the primary's share to the fallback (and supersede any restore in progress): the
    fallback's min-scale goes up first, and the share moves once the fallback has the ready
    replicas for it (bounded wait)."""
    s = ctx.settings
    epoch = int(ctx.redis.incr(epoch_key(ctx)))
    cancel(ctx, restore_member(ctx))
    if s.kserve_isvc:
        return reroute_canary(ctx, NAME, reason, cause_event_id)
    share = _primary_share(ctx)
    scale_note = fallback_scale(ctx, boosted=True)
    wait_note = ""
    if share > 0:
        superseded, wait_note = _wait_fallback_ready(ctx, epoch)
        if superseded:
            return Outcome(NAME, NOOP, f"reroute superseded by a newer breaker event{scale_note}")
    moved = 0

    def compute(current: list[Target]) -> list[Target]:
        nonlocal moved
        primary = find(current, s.primary_revision, s.primary_tag)
        if primary is not None and primary.percent > 0:
            ctx.redis.set(saved_key(ctx), encode(current), nx=True)
            moved = primary.percent
        return rerouted_split(current, s)

    cap = capacity(ctx)
    if cap.fallback == 0:
        return stay(ctx, cap, f"reroute held: {reason}", scale_note)
    with locked(ctx, f"traffic:{s.service}"):
        targets, changed = apply(ctx, compute)
    if not changed:
        return Outcome(NAME, NOOP, f"{s.primary_revision} already at 0%{scale_note}")
    reply = ctx.event(NAME, TrafficRerouted(
        service=s.service, namespace=s.namespace, from_revision=s.primary_revision,
        to_revision=s.fallback_revision, percent=moved, targets=wire(targets), reason=reason,
        cause_event_id=cause_event_id))
    return Outcome(NAME, ACTED, f"moved {moved}% from {s.primary_revision} to "
                                f"{s.fallback_revision}{scale_note}{wait_note}", reply=reply)


# --- restore ------------------------------------------------------------------------------


def primary_health(ctx: Context) -> tuple[int, str]:
    """Ready primary replicas on nodes whose breaker is not open, and a line saying so."""
    s = ctx.settings
    ok, bad = healthy_ready(ctx, [r for r in ctx.platform.replicas(s.service)
                                  if r.revision == s.primary_revision])
    detail = f"{len(ok)} ready primary replicas (need {s.restore_min_ready})"
    if bad:
        detail += f"; nodes with open breakers: {', '.join(sorted(bad))}"
    return len(ok), detail


def _wait_healthy(ctx: Context, epoch: int) -> tuple[bool, str]:
    s = ctx.settings
    deadline = ctx.clock() + s.restore_health_timeout_s
    while True:
        n, detail = primary_health(ctx)
        if n >= s.restore_min_ready:
            return True, detail
        if ctx.clock() >= deadline or current_epoch(ctx) != epoch:
            return False, detail
        ctx.sleep(s.restore_health_poll_s)


def _normal_share(ctx: Context) -> tuple[int | None, str]:
    """The primary's share before the reroute (None and why when there is nothing to restore)."""
    s = ctx.settings
    saved = decode(ctx.redis.get(saved_key(ctx)))
    current = ctx.platform.traffic(s.service)
    primary = find(current, s.primary_revision, s.primary_tag)
    fallback = find(current, s.fallback_revision, s.fallback_tag)
    if primary is None or fallback is None:
        return None, "service does not route to both revisions; nothing to restore"
    normal = find(saved, s.primary_revision, s.primary_tag) if saved else None
    if normal is not None:
        return normal.percent, ""
    if primary.percent > 0:
        return None, (f"{s.primary_revision} is at {primary.percent}% and no reroute is "
                      "recorded; nothing to restore")
    return primary.percent + fallback.percent, ""


def capacity_check(ctx: Context, *, node: str, cause_event_id: str | None = None) -> Outcome:
    """A node's breaker opened: the gateways route around that node. If the primary is left
    with fewer than ``primary_min_ready`` ready replicas on healthy nodes, it cannot carry its
    share: the pair's share is split by the ready capacity each revision has left,
    remembering that capacity (not the primary's breaker) was the cause. While the traffic is
    rerouted already, the split follows the capacity the node took away (e.g. the fallback's
    last replica)."""
    s = ctx.settings
    rerouted = bool(ctx.redis.exists(saved_key(ctx)))
    n, detail = primary_health(ctx)
    if n >= s.primary_min_ready and (not rerouted or capacity(ctx).fallback > 0):
        return Outcome(NAME, NOOP, f"node {node}: the primary keeps {n} ready replicas on "
                                   f"healthy nodes (minimum {s.primary_min_ready})")
    if not rerouted:
        ctx.redis.set(cause_key(ctx), "capacity", nx=True)
    reason = f"node {node} breaker opened; {detail}"
    if n < s.primary_min_ready:
        reason = (f"node {node} breaker opened; primary below its minimum of "
                  f"{s.primary_min_ready}: {detail}")
    if s.kserve_isvc:
        return reroute(ctx, reason=reason, cause_event_id=cause_event_id)
    return rebalance(ctx, reason=reason, cause_event_id=cause_event_id)


def capacity_restore(ctx: Context) -> Outcome:
    """After a capacity reroute, restore once the primary is back at its minimum on healthy
    nodes (and its own breaker is closed)."""
    s = ctx.settings
    cause = ctx.redis.get(cause_key(ctx))
    if cause != b"capacity":
        return Outcome(NAME, NOOP, "no capacity reroute to undo")
    state = ctx.breakers.status(revision_key(s.primary_revision)).state
    if state in _OPEN_STATES:
        return Outcome(NAME, NOOP, f"the primary's breaker is {state}")
    n, detail = primary_health(ctx)
    if n < s.primary_min_ready:
        return Outcome(NAME, NOOP, f"primary still below its minimum of "
                                   f"{s.primary_min_ready}: {detail}")
    return restore(ctx, reason=f"primary capacity back: {detail}")


def trial(ctx: Context, *, reason: str) -> Outcome:
    """The primary's breaker went half-open: give the primary the first restore step, so the
    gateways have requests to probe it with (a revision at 0% gets none, and its breaker would
    stay half-open until it re-opens). The probes then close the breaker (and the restore
    continues on ``breaker.closed``) or re-open it (and the reroute takes the share back)."""
    s = ctx.settings
    epoch = int(ctx.redis.incr(epoch_key(ctx)))
    first = s.restore_steps[0]
    if s.kserve_isvc:
        canary = canary_of(ctx)
        with locked(ctx, f"traffic:{s.service}"):
            if canary.canary_percent(s.kserve_isvc) != 0:
                return Outcome(NAME, NOOP, "the primary already receives traffic")
            raw = ctx.redis.get(saved_canary_key(ctx))
            want = max(1, round((int(raw) if raw is not None else 100) * first / 100))
            canary.set_canary_percent(s.kserve_isvc, want)
        reply = ctx.event(NAME, TrafficRestored(
            service=s.service, namespace=s.namespace, revision=s.primary_revision, percent=want,
            step=1, reason=f"{reason}; trial traffic, canaryTrafficPercent {want}"))
        return Outcome(NAME, ACTED, f"trial: canaryTrafficPercent {want}", reply=reply)
    normal_pct, why_not = _normal_share(ctx)
    if normal_pct is None:
        return Outcome(NAME, NOOP, why_not)
    n, detail = primary_health(ctx)
    if n < s.restore_min_ready:
        return Outcome(NAME, NOOP, f"no trial traffic: {detail}")
    with locked(ctx, f"traffic:{s.service}"):
        if current_epoch(ctx) != epoch:
            return Outcome(NAME, NOOP, "trial superseded by a newer breaker event")
        targets, changed = apply(ctx, functools.partial(
            restored_split, settings=s, normal_primary=normal_pct, step=first))
    if not changed:
        return Outcome(NAME, NOOP, "the primary already receives its trial share or more")
    pct = next((t.percent for t in targets if is_target(t, s.primary_revision, s.primary_tag)), 0)
    reply = ctx.event(NAME, TrafficRestored(
        service=s.service, namespace=s.namespace, revision=s.primary_revision, percent=pct,
        step=1, targets=wire(targets), reason=f"{reason}; trial traffic for the half-open "
                                               f"breaker; {detail}"))
    return Outcome(NAME, ACTED, f"trial: {s.primary_revision} at {pct}%", reply=reply)


def restore(ctx: Context, *, reason: str) -> Outcome:
    """Give the primary its share back in steps, checking its health before each step."""
    s = ctx.settings
    epoch = int(ctx.redis.incr(epoch_key(ctx)))
    cancel(ctx, restore_member(ctx))
    if s.kserve_isvc:
        return restore_canary(ctx, NAME, reason, epoch, _Steps())
    normal_pct, why_not = _normal_share(ctx)
    if normal_pct is None:
        return Outcome(NAME, NOOP, why_not)
    # the sweep leaves a restore that runs alone (it would supersede it)
    marker = restoring_key(ctx)
    ctx.redis.set(marker, str(epoch), px=restoring_ms(ctx))
    try:
        return _steps(ctx, epoch, normal_pct, reason)
    finally:
        ctx.redis.delete(marker)


def _steps(ctx: Context, epoch: int, normal_pct: int, reason: str) -> Outcome:
    s = ctx.settings
    last: Event | None = None
    steps = s.restore_steps
    for i, step in enumerate(steps, start=1):
        if i > 1:
            ctx.sleep(s.restore_step_wait_s)
        if current_epoch(ctx) != epoch:
            return Outcome(NAME, NOOP, f"restore superseded by a newer breaker event after "
                                       f"step {i - 1}", reply=last)
        state = ctx.breakers.status(revision_key(s.primary_revision)).state
        if state in _OPEN_STATES:
            return Outcome(NAME, NOOP, f"restore stopped at step {i - 1}: the primary's breaker "
                                       f"is {state} again", reply=last)
        healthy, detail = _wait_healthy(ctx, epoch)
        if not healthy:
            return _pause(ctx, epoch, i, detail, reason)
        with locked(ctx, f"traffic:{s.service}"):
            if current_epoch(ctx) != epoch:
                return Outcome(NAME, NOOP, "restore superseded by a newer breaker event",
                               reply=last)
            targets, _ = apply(ctx, functools.partial(
                restored_split, settings=s, normal_primary=normal_pct, step=step))
        pct = percent_of(targets, s.primary_revision, s.primary_tag)
        event = ctx.event(NAME, TrafficRestored(
            service=s.service, namespace=s.namespace, revision=s.primary_revision, percent=pct,
            step=i, targets=wire(targets), reason=f"{reason}; {detail}"))
        if last is not None:
            ctx.emit(last)
        last = event
    scale_note = fallback_scale(ctx, boosted=False)
    ctx.redis.delete(saved_key(ctx), cause_key(ctx))
    return Outcome(NAME, ACTED, f"restored {s.primary_revision} to {normal_pct}% in "
                                f"{len(steps)} steps{scale_note}", reply=last)


def _pause(ctx: Context, epoch: int, step: int, detail: str, reason: str) -> Outcome:
    """The primary is not healthy enough: back to the fallback, retry later."""
    s = ctx.settings
    held = capacity(ctx).fallback == 0
    with locked(ctx, f"traffic:{s.service}"):
        if current_epoch(ctx) != epoch:
            return Outcome(NAME, NOOP, "restore superseded by a newer breaker event")
        if held:
            targets, changed = ctx.platform.traffic(s.service), False
        else:
            targets, changed = apply(ctx, lambda cur: rerouted_split(cur, s))
    if held:
        detail += f"; {s.fallback_revision} has no ready replica, traffic left as it is"
        log.warning("%s %s: restore paused before step %d: %s", NAME, s.service, step, detail)
    due = ctx.clock() + max(s.restore_step_wait_s, s.restore_health_poll_s)
    defer(ctx, restore_member(ctx), due)
    reply = None
    if changed:
        reply = ctx.event(NAME, TrafficRerouted(
            service=s.service, namespace=s.namespace, from_revision=s.primary_revision,
            to_revision=s.fallback_revision, percent=100, targets=wire(targets),
            reason=f"restore paused before step {step}: {detail}"))
    return Outcome(NAME, DEFERRED, f"restore paused before step {step} ({detail}); retrying "
                                   "later", reply=reply, details={"due": due})


def sweep(ctx: Context) -> list[Outcome]:
    """Retry the restores that were paused for an unhealthy primary."""
    def run(service: str) -> Outcome:
        if service != ctx.settings.service:
            return Outcome(NAME, NOOP, f"restore of another service {service} skipped")
        state = ctx.breakers.status(revision_key(ctx.settings.primary_revision)).state
        if state in _OPEN_STATES:
            return Outcome(NAME, NOOP, f"primary breaker is {state}; restore waits for it")
        try:
            return restore(ctx, reason="retrying a paused restore")
        except MAPPED as exc:
            raise map_error(exc, f"{NAME} restore {service}") from exc

    def scale(service: str) -> Outcome:
        if service != ctx.settings.service:
            return Outcome(NAME, NOOP, f"scale of another service {service} skipped")
        boosted = ctx.redis.get(ctx.key("traffic", service, "boosted")) == b"1"
        note = fallback_scale(ctx, boosted)
        return Outcome(NAME, NOOP, f"retried the fallback's scale{note}")

    out = run_deferred(ctx, NAME, "restore", run) + run_deferred(ctx, NAME, "scale", scale)
    try:
        repaired = reconcile(ctx)
    except MAPPED as exc:
        log.warning("traffic reconcile failed: %s", map_error(exc, NAME))
    else:
        if repaired is not None and repaired.status != NOOP:
            out.append(repaired)
    return out


def reconcile(ctx: Context) -> Outcome | None:
    """Bring the split in line with the breakers and the ready capacity, whatever events were
    lost: a tripped primary that still has a share is rerouted, a half-open one that has none
    gets its trial share, a closed one still rerouted is restored, and a capacity reroute
    follows the ready counts (or is undone). None when a restore is running or due."""
    s = ctx.settings
    if s.kserve_isvc or ctx.redis.exists(restoring_key(ctx)) or deferred_at(
            ctx, restore_member(ctx)) is not None:
        return None
    state = ctx.breakers.status(revision_key(s.primary_revision)).state
    share = percent_of(ctx.platform.traffic(s.service), s.primary_revision, s.primary_tag)
    rerouted = bool(ctx.redis.exists(saved_key(ctx)))
    if state in TRIPPED:
        if share > 0 and ctx.redis.get(cause_key(ctx)) != b"breaker":
            ctx.redis.set(cause_key(ctx), "breaker")
            ctx.redis.incr(epoch_key(ctx))  # supersedes a restore of an older close
        return rebalance(ctx, reason=f"sweep: the primary's breaker is {state}")
    if state == "half_open":
        if share == 0 and rerouted:
            return trial(ctx, reason="sweep: the primary's breaker is half-open")
        return rebalance(ctx, reason="sweep: the primary's breaker is half-open")
    if not rerouted:
        return None
    if ctx.redis.get(cause_key(ctx)) == b"capacity":
        n, detail = primary_health(ctx)
        if n >= s.primary_min_ready:
            return capacity_restore(ctx)
        return rebalance(ctx, reason=f"sweep: primary below its minimum of "
                                     f"{s.primary_min_ready}: {detail}")
    return restore(ctx, reason="sweep: the primary's breaker is closed")


class _Steps:
    """What a KServe restore shares with the Knative one: the epoch, the health wait, the
    deferred restore's member."""

    @staticmethod
    def epoch(ctx: Context) -> int:
        return current_epoch(ctx)

    @staticmethod
    def wait_healthy(ctx: Context, epoch: int) -> tuple[bool, str]:
        return _wait_healthy(ctx, epoch)

    @staticmethod
    def restore_member(ctx: Context) -> str:
        return restore_member(ctx)

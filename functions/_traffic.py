"""The traffic state reroute_traffic keeps, and the moves it shares between its handlers.

Every traffic change reads the split, computes the new one and writes it under a per-service
Redis lock (a merge patch replaces the whole list), re-reading on 409; the split before a
reroute, its cause and a per-service epoch (a newer breaker event supersedes an older one's
restore) live in Redis. ``rebalance`` splits the primary's and the fallback's share by the
ready capacity each revision has left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from events import TrafficRerouted
from functions._capacity import Capacity, capacity
from functions._context import ACTED, NOOP, Context, Outcome
from functions._errors import TemporaryFunctionError
from functions._split import capacity_share, decode, encode, percent_of, pool_of, split_at, wire
from functions._state import cancel, defer, locked
from knative import Conflict, PlatformError, Target
from knative.breakers import revision_key

log = logging.getLogger(__name__)

NAME = "reroute_traffic"
CONFLICT_RETRIES = 5
TRIPPED = ("open", "forced_open")


# --- keys -----------------------------------------------------------------------------------


def epoch_key(ctx: Context) -> str:
    return ctx.key("traffic", ctx.settings.service, "epoch")


def saved_key(ctx: Context) -> str:
    return ctx.key("traffic", ctx.settings.service, "saved")


def cause_key(ctx: Context) -> str:
    """Why the traffic is rerouted: ``breaker`` (the primary's breaker) or ``capacity`` (node
    breakers left the primary below its minimum)."""
    return ctx.key("traffic", ctx.settings.service, "cause")


def restore_member(ctx: Context) -> str:
    return f"{NAME}|restore|{ctx.settings.service}"


def apply(
    ctx: Context, compute: Callable[[list[Target]], list[Target]]
) -> tuple[list[Target], bool]:
    """Read the split, compute the new one, write it; a 409 re-reads and recomputes."""
    service = ctx.settings.service
    for _ in range(CONFLICT_RETRIES + 1):
        current = ctx.platform.traffic(service)
        new = compute(current)
        if new == current:
            return current, False
        try:
            ctx.platform.set_traffic(service, new)
            ctx.redis.delete(held_key(ctx))
            return new, True
        except Conflict as exc:
            log.info("traffic of %s changed underneath (%s); re-reading", service, exc)
    raise TemporaryFunctionError(f"traffic of {service}: still conflicting after "
                                 f"{CONFLICT_RETRIES + 1} tries")


def scale_member(ctx: Context) -> str:
    return f"{NAME}|scale|{ctx.settings.service}"


def fallback_low(ctx: Context, boosted: bool) -> int:
    s = ctx.settings
    return int(s.fallback_min_scale + s.fallback_standby + (s.fallback_boost if boosted else 0))


def fallback_scale(ctx: Context, boosted: bool) -> str:
    """Set the fallback's min-scale (boosted or not) on its Revision. A failure here does not
    fail the event (the primary is failing either way): it is logged, said in the outcome, and
    a temporary one is retried by the sweep (the desired state is kept in Redis)."""
    s = ctx.settings
    low = fallback_low(ctx, boosted)
    ctx.redis.set(ctx.key("traffic", s.service, "boosted"), "1" if boosted else "0")
    try:
        ctx.platform.set_scale(s.service, s.fallback_revision, low, s.fallback_max_scale)
    except PlatformError as exc:
        log.warning("fallback %s min-scale %d not set: %s", s.fallback_revision, low, exc)
        if exc.temporary:
            defer(ctx, scale_member(ctx), ctx.clock() + 5.0)
            return f"; fallback min-scale {low} not set yet ({exc}), retrying"
        return f"; fallback min-scale {low} not set ({exc})"
    cancel(ctx, scale_member(ctx))
    return f"; fallback min-scale {low}"


def held_key(ctx: Context) -> str:
    """The last "traffic left as it is" line (so it is logged once per change)."""
    return ctx.key("traffic", ctx.settings.service, "held")


def current_epoch(ctx: Context) -> int:
    return int(ctx.redis.get(epoch_key(ctx)) or 0)


def restoring_key(ctx: Context) -> str:
    return ctx.key("traffic", ctx.settings.service, "restoring")


def restoring_ms(ctx: Context) -> int:
    s = ctx.settings
    per_step = s.restore_step_wait_s + s.restore_health_timeout_s + 30.0
    return int(per_step * (len(s.restore_steps) + 1) * 1000)


# --- moves by capacity ------------------------------------------------------------------


def stay(ctx: Context, cap: Capacity, what: str, note: str = "") -> Outcome:
    """Traffic is not moved to a fallback without ready replicas: say so (the sweep moves it
    once the fallback has some)."""
    s = ctx.settings
    if cap.none_ready:
        text = (f"{what}: neither {s.primary_revision} nor {s.fallback_revision} has a ready "
                f"replica; traffic left as it is ({cap.line()})")
    else:
        text = (f"{what}: {s.fallback_revision} has no ready replica; traffic left as it is "
                f"({cap.line()})")
    # said once per change, not at every sweep while it lasts
    if ctx.redis.set(held_key(ctx), text, ex=3600, get=True) != text.encode():
        log.warning("%s", text)
    else:
        log.debug("%s", text)
    return Outcome(NAME, NOOP, text + note, details={"held": True})


def wanted(state: str, cap: Capacity, pool: int, normal: int, current: int) -> int:
    """The primary's percent of the pair's ``pool`` for the ready capacity ``cap``: nothing
    to a revision without ready replicas; nothing to a tripped primary while the fallback can
    serve; the trial share kept while half-open; else in proportion to ready replicas."""
    if cap.fallback == 0:
        return pool
    if cap.primary == 0 or state in TRIPPED:
        return 0
    if state == "half_open":
        return current
    return capacity_share(pool, normal, cap.primary, cap.fallback)


def rebalance(ctx: Context, *, reason: str, cause_event_id: str | None = None) -> Outcome:
    """Split the primary's and the fallback's share by the ready capacity each has left (see
    ``wanted``); with neither ready, leave the traffic as it is and say so."""
    s = ctx.settings
    cap = capacity(ctx)
    if cap.none_ready:
        return stay(ctx, cap, reason)
    state = ctx.breakers.status(revision_key(s.primary_revision)).state
    before = normal = 0

    def compute(current: list[Target]) -> list[Target]:
        nonlocal before, normal
        before = percent_of(current, s.primary_revision, s.primary_tag)
        if before > 0:
            ctx.redis.set(saved_key(ctx), encode(current), nx=True)
        pool = pool_of(current, s)
        saved = decode(ctx.redis.get(saved_key(ctx)))
        normal = percent_of(saved, s.primary_revision, s.primary_tag) if saved else pool
        return split_at(current, s, wanted(state, cap, pool, normal, before))

    with locked(ctx, f"traffic:{s.service}"):
        targets, changed = apply(ctx, compute)
    after = percent_of(targets, s.primary_revision, s.primary_tag)
    if not changed:
        return Outcome(NAME, NOOP, f"the split follows ready capacity: {s.primary_revision} at "
                                   f"{after}% ({cap.line()})")
    note = fallback_scale(ctx, boosted=True) if after < before else ""
    if after < before:
        src, dst, moved = s.primary_revision, s.fallback_revision, before - after
    else:
        src, dst, moved = s.fallback_revision, s.primary_revision, after - before
    text = f"split by ready capacity: {s.primary_revision} {before}% -> {after}% ({cap.line()})"
    log.info("%s %s: %s", NAME, s.service, text)
    reply = ctx.event(NAME, TrafficRerouted(
        service=s.service, namespace=s.namespace, from_revision=src, to_revision=dst,
        percent=moved, targets=wire(targets), reason=f"{reason}; {text}",
        cause_event_id=cause_event_id))
    return Outcome(NAME, ACTED, f"moved {moved}% from {src} to {dst}: {text}{note}",
                   reply=reply, details={"primary_percent": after})

"""trip_breaker: open a breaker in Redis the moment a fault is reported.

This is the fast path. Gateways learn a breaker's state by pub/sub, so opening it here stops
routing to a broken node or revision within milliseconds, before any client request fails on
it; the slower reactions (traffic, quarantine) follow through the broker.

- a fatal GPU fault (the XID action table, ``gpu.lost``, an uncorrectable ECC error) opens
  the node's breaker (``node:<node>``) and cancels a pending half-open of it;
- ``pod.oomkilled`` / ``pod.crashloop`` are counted per revision in a Redis window (one member
  per event id, so a redelivery counts once); at ``crash_threshold`` within ``crash_window_s``
  the revision's breaker (``revision:<revision>``) opens;
- ``gpu.healthy`` half-opens the node's breaker after ``node_hold_s`` (deferred in Redis; a
  new fault before then cancels it; the host's sweep, or a ping, runs it when due);
- ``dev.knative.sources.ping`` runs the due half-opens.

Replies: ``breaker.opened`` / ``breaker.halfopened`` with the id the breaker's own transition
events carry (``<key>/<generation>/<redis-time-ms>``, extensions ``breakerstate`` and
``breakergen``), so consumers deduplicate one transition across both paths.
"""

from __future__ import annotations

import logging
from typing import Any

from events import (
    KNATIVE_PING,
    BreakerHalfOpened,
    BreakerOpened,
    Event,
    GpuEcc,
    GpuHealthy,
    GpuLost,
    GpuXid,
    PodCrashLoop,
    PodOomKilled,
    payload_of,
)
from functions._common import check_type, merge, run_deferred
from functions._context import ACTED, DEFERRED, NOOP, Context, Outcome
from functions._errors import MAPPED, map_error
from functions._faults import Fault, assess
from functions._once import once
from functions._state import cancel, count_in_window, defer
from knative.breakers import Transition, node_key, revision_key

log = logging.getLogger(__name__)

NAME = "trip_breaker"
FAULT_TYPES = (GpuXid.TYPE, GpuEcc.TYPE, GpuLost.TYPE)
CRASH_TYPES = (PodOomKilled.TYPE, PodCrashLoop.TYPE)
TYPES = (*FAULT_TYPES, GpuHealthy.TYPE, *CRASH_TYPES, KNATIVE_PING)


def _half_open_member(node: str) -> str:
    return f"{NAME}|halfopen|{node}"


def _hold(t: Transition) -> float | None:
    return round(t.until - t.at, 3) if t.until else None


def _reply_id(t: Transition) -> dict[str, Any]:
    """The id and extensions the breaker's own transition events use (knative's
    CloudEventSink), so a consumer deduplicates one transition across both paths."""
    return {"id": f"{t.key}/{t.generation}/{round(t.at * 1000)}",
            "extensions": {"breakerstate": t.new, "breakergen": str(t.generation)}}


@once(NAME)
def handle(event: Event, ctx: Context) -> Outcome:
    """Handle one event (idempotent by event id)."""
    check_type(NAME, event, TYPES)
    try:
        if event.type == KNATIVE_PING:
            return merge(NAME, sweep(ctx), "no half-open due")
        if event.type == GpuHealthy.TYPE:
            return _healthy(event, ctx)
        if event.type in CRASH_TYPES:
            return _crash(event, ctx)
        fault = assess(event)
        if fault is None:
            return Outcome(NAME, NOOP, f"{event.type} {_describe(event)} is not a fatal fault")
        return open_node(ctx, fault, cause_event_id=event.id)
    except MAPPED as exc:
        raise map_error(exc, f"{NAME} {event.type} {event.id}") from exc


def _describe(event: Event) -> str:
    data = event.data if isinstance(event.data, dict) else {}
    if "xid" in data:
        return f"XID {data['xid']} on {data.get('node')}"
    return f"on {data.get('node')}"


def open_node(ctx: Context, fault: Fault, *, cause_event_id: str | None = None) -> Outcome:
    """Open ``node:<fault.node>`` (the fast path of a fatal GPU fault)."""
    key = node_key(fault.node)
    t = ctx.breakers.open(key, fault.reason)
    cancel(ctx, _half_open_member(fault.node))
    if t is None:
        state = ctx.breakers.status(key).state
        return Outcome(NAME, NOOP, f"breaker {key} is already {state}")
    reply = ctx.event(NAME, BreakerOpened(scope="node", name=fault.node, reason=fault.reason,
                                          cause_event_id=cause_event_id, hold_seconds=_hold(t)),
                      **_reply_id(t))
    return Outcome(NAME, ACTED, f"opened {key}: {fault.reason}", reply=reply,
                   details={"key": key, "generation": t.generation})


def _crash(event: Event, ctx: Context) -> Outcome:
    p = payload_of(event)
    assert isinstance(p, (PodOomKilled, PodCrashLoop))
    s = ctx.settings
    what = "OOMKilled" if isinstance(p, PodOomKilled) else "CrashLoopBackOff"
    if not p.revision:
        return Outcome(NAME, NOOP, f"pod {p.pod} ({what}) names no revision")
    if p.service and p.service != s.service:
        return Outcome(NAME, NOOP, f"pod {p.pod} belongs to service {p.service}, not {s.service}")
    n = count_in_window(ctx, ctx.key("crashes", p.revision), event.id, s.crash_window_s)
    if n < s.crash_threshold:
        return Outcome(NAME, NOOP, f"{n} of {s.crash_threshold} crashes of revision "
                                   f"{p.revision} within {s.crash_window_s:g}s")
    key = revision_key(p.revision)
    reason = (f"{n} OOMKilled/CrashLoop events within {s.crash_window_s:g}s "
              f"(last: pod {p.pod} {what})")
    t = ctx.breakers.open(key, reason)
    if t is None:
        return Outcome(NAME, NOOP, f"breaker {key} is already {ctx.breakers.status(key).state}")
    reply = ctx.event(NAME, BreakerOpened(scope="revision", name=p.revision, reason=reason,
                                          cause_event_id=event.id, hold_seconds=_hold(t)),
                      **_reply_id(t))
    return Outcome(NAME, ACTED, f"opened {key}: {reason}", reply=reply,
                   details={"key": key, "generation": t.generation})


def _healthy(event: Event, ctx: Context) -> Outcome:
    p = payload_of(event)
    assert isinstance(p, GpuHealthy)
    key = node_key(p.node)
    state = ctx.breakers.status(key).state
    if state != "open":
        return Outcome(NAME, NOOP, f"breaker {key} is {state}, not open")
    hold = ctx.settings.node_hold_s
    if hold <= 0:
        return half_open_node(ctx, p.node, cause_event_id=event.id)
    due = ctx.clock() + hold
    defer(ctx, _half_open_member(p.node), due)
    return Outcome(NAME, DEFERRED, f"{key} half-opens in {hold:g}s unless a new fault arrives",
                   details={"due": due})


def half_open_node(ctx: Context, node: str, *, cause_event_id: str | None = None) -> Outcome:
    key = node_key(node)
    t = ctx.breakers.half_open(key, "GPU reported healthy for the hold time")
    if t is None:
        return Outcome(NAME, NOOP, f"breaker {key} is {ctx.breakers.status(key).state}, not open")
    reply = ctx.event(NAME, BreakerHalfOpened(scope="node", name=node, reason=t.reason,
                                              cause_event_id=cause_event_id),
                      **_reply_id(t))
    return Outcome(NAME, ACTED, f"half-opened {key}", reply=reply)


def sweep(ctx: Context) -> list[Outcome]:
    """Run the half-opens whose hold time is over."""
    def run(node: str) -> Outcome:
        try:
            return half_open_node(ctx, node)
        except MAPPED as exc:
            raise map_error(exc, f"{NAME} half-open {node}") from exc

    return run_deferred(ctx, NAME, "halfopen", run)

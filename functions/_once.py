"""Exactly-once effects over at-least-once delivery: each event id is acted on once.

A broker delivers an event at least once; a Knative Broker may deliver it again after a
timeout, and two replicas of the functions host may get the same event at the same moment.
Each function therefore claims ``(function, source, id)`` in Redis before acting:

- the claim is ``SET key "R:<token>" NX PX lease``: one delivery wins, atomically;
- when the winner finishes, the key becomes ``"D:<outcome>"`` (the status, the reason and the
  reply event) for ``dedupe_ttl_s``; a later delivery answers the *same* reply (same event id)
  with status ``duplicate`` and does nothing;
- when the winner fails (temporary or permanent), it deletes its claim, so the broker's
  redelivery of that failed attempt acts again;
- a second delivery that arrives *while* the winner runs waits for it (up to
  ``inflight_wait_s``, polling Redis): if the winner finishes, it answers ``duplicate`` with
  the winner's reply; if the winner failed, it takes the claim and acts itself; if the winner
  is still running when the wait is over, the event is *handed over*: kept in Redis with a
  deferred check a lease later, and the delivery is answered ``deferred`` (HTTP 202). A broker
  redelivers when its own request timed out, so a long handler (a stepwise restore) would
  otherwise see every redelivery refused with 503 until the broker gives up on an event that
  is being handled. The host's sweep runs each due hand-over (``run_handoffs``): a finished
  winner's reply goes to the sink (its own answer may have been lost with the broker's
  timeout), a failed or crashed winner's event is handled again, a running one is checked a
  lease later. A loser therefore never reports failure for an action that has happened, and an
  action that has not happened stays owed by someone.
- a crashed winner's claim expires after ``lease_s`` (live handlers renew it, see
  ``LeaseKeeper``), so redelivery is not blocked for long.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from events import Event, from_dict, to_dict
from functions._context import DEFERRED, DUPLICATE, Context, Outcome
from functions._errors import TemporaryFunctionError, map_error
from functions._state import defer, take_due

log = logging.getLogger(__name__)

Handler = Callable[[Event, Context], Outcome]

_POLL_S = 0.005

_FINISH = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def seen_key(ctx: Context, function: str, event: Event) -> str:
    digest = hashlib.sha1(f"{event.source}\0{event.id}".encode()).hexdigest()
    return ctx.key("seen", function, digest)


def _encode(outcome: Outcome) -> str:
    doc: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason}
    if outcome.reply is not None:
        doc["reply"] = to_dict(outcome.reply)
    return "D:" + json.dumps(doc, separators=(",", ":"))


def _decode(function: str, raw: str) -> Outcome:
    try:
        doc = json.loads(raw[2:])
        reply = from_dict(doc["reply"], accept=None) if doc.get("reply") else None
        status, reason = str(doc.get("status", "")), str(doc.get("reason", ""))
    except (ValueError, KeyError, TypeError) as exc:  # a stored record we cannot read
        log.warning("unreadable dedupe record for %s: %s", function, exc)
        reply, status, reason = None, "unknown", "unreadable record"
    return Outcome(function, DUPLICATE, f"already handled ({status}): {reason}", reply=reply,
                   details={"first_status": status})


def run_once(function: str, event: Event, ctx: Context, work: Callable[[], Outcome]) -> Outcome:
    """Run ``work`` unless this event was handled by ``function`` before (see the module doc)."""
    r = ctx.redis
    key = seen_key(ctx, function, event)
    token = "R:" + uuid.uuid4().hex
    lease_ms = max(1, int(ctx.settings.lease_s * 1000))
    deadline = time.monotonic() + ctx.settings.inflight_wait_s
    try:
        while True:
            if r.set(key, token, nx=True, px=lease_ms):
                break
            raw = r.get(key)
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                if text.startswith("D:"):
                    return _decode(function, text)
                if time.monotonic() >= deadline:
                    return hand_over(ctx, function, event, key)
                time.sleep(_POLL_S)
    except redis.RedisError as exc:
        raise map_error(exc, f"{function}: claim event {event.id}") from exc
    ctx.leases.hold(key, token)
    try:
        outcome = work()
    except BaseException:
        ctx.leases.drop(key)
        try:
            ctx.script(_RELEASE)(keys=[key], args=[token])
        except redis.RedisError as exc:
            log.warning("could not release the claim on %s (it expires with its lease): %s",
                        event.id, exc)
        raise
    ctx.leases.drop(key)
    ttl_ms = max(1, int(ctx.settings.dedupe_ttl_s * 1000))
    try:
        ctx.script(_FINISH)(keys=[key], args=[token, _encode(outcome), ttl_ms])
    except redis.RedisError as exc:
        # The action happened; only the memory of it failed. A redelivery may act again, and
        # every action is safe to repeat (absolute states, not increments).
        log.warning("could not record event %s as handled by %s: %s", event.id, function, exc)
    return outcome


def once(function: str) -> Callable[[Handler], Handler]:
    """Make a handler idempotent by event id (``run_once``)."""

    def deco(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def wrapper(event: Event, ctx: Context) -> Outcome:
            return run_once(function, event, ctx, lambda: fn(event, ctx))

        return wrapper  # functools.wraps keeps the bare handler as __wrapped__

    return deco


# --- hand-overs ---------------------------------------------------------------------------

HANDOFF = "handoff"
RETRY_HANDOFF_S = 5.0


def _handoff_key(ctx: Context) -> str:
    return ctx.key("handoffs")


def hand_over(ctx: Context, function: str, event: Event, key: str) -> Outcome:
    """Keep ``event`` (whose claim ``key`` another delivery holds) for the sweep to check a
    lease from now; the answer is ``deferred``."""
    member = f"{function}|{HANDOFF}|{key.rsplit(':', 1)[-1]}"
    ctx.redis.hset(_handoff_key(ctx), member, json.dumps(to_dict(event), separators=(",", ":")))
    defer(ctx, member, ctx.clock() + ctx.settings.lease_s)
    text = (f"{function}: event {event.id} is being handled by another delivery (still running "
            f"after {ctx.settings.inflight_wait_s:g}s); handed over to the sweep, which checks "
            f"it in {ctx.settings.lease_s:g}s")
    log.info("%s", text)
    return Outcome(function, DEFERRED, text, details={"handoff": True})


def handoffs(ctx: Context) -> list[str]:
    """The hand-overs kept (``function|handoff|digest``)."""
    return sorted(m.decode() if isinstance(m, bytes) else str(m)
                  for m in ctx.redis.hkeys(_handoff_key(ctx)))


def run_handoffs(ctx: Context, handlers: dict[str, Handler]) -> list[Outcome]:
    """Every due hand-over: its function's handler again (``duplicate`` with the winner's reply
    when it finished; handled when the winner failed or crashed). A winner still running is
    checked again later; a temporary failure retries in a few seconds; a permanent one is
    logged and dropped."""
    out: list[Outcome] = []
    for function, handler in handlers.items():
        for member in take_due(ctx, f"{function}|{HANDOFF}|"):
            raw = ctx.redis.hget(_handoff_key(ctx), member)
            if raw is None:
                continue
            event = from_dict(json.loads(raw), accept=None)
            outcome = _run_handoff(ctx, function, handler, event, member)
            if outcome is not None:
                out.append(outcome)
    return out


def _run_handoff(ctx: Context, function: str, handler: Handler, event: Event,
                 member: str) -> Outcome | None:
    raw = ctx.redis.get(seen_key(ctx, function, event))
    if raw is not None and (raw.decode() if isinstance(raw, bytes) else str(raw)).startswith("R:"):
        defer(ctx, member, ctx.clock() + ctx.settings.lease_s)  # the winner is still at it
        return None
    try:
        outcome = handler(event, ctx)
    except TemporaryFunctionError as exc:
        log.warning("%s: handed-over event %s failed, retrying in %gs: %s", function, event.id,
                    RETRY_HANDOFF_S, exc)
        defer(ctx, member, ctx.clock() + RETRY_HANDOFF_S)
        return None
    except Exception:
        log.exception("%s: handed-over event %s failed; dropped", function, event.id)
        ctx.redis.hdel(_handoff_key(ctx), member)
        return None
    if outcome.details.get("handoff"):
        return None  # still running: handed over again
    ctx.redis.hdel(_handoff_key(ctx), member)
    log.info("%s: handed-over event %s: %s %s", function, event.id, outcome.status,
             outcome.reason)
    return outcome

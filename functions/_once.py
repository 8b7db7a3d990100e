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
  is still running when the wait is over, it answers 503 (temporary) and the broker redelivers
  later. A loser therefore never reports success for an action that has not happened, and never
  reports failure for one that has.
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
from functions._context import DUPLICATE, Context, Outcome
from functions._errors import TemporaryFunctionError, map_error

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
                    raise TemporaryFunctionError(
                        f"{function}: event {event.id} is being handled by another delivery; "
                        "retry later"
                    )
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

"""The functions' shared state in Redis, each change one atomic step.

Several replicas of the functions host may run at once, so every piece of state they share is
changed by a single Redis command or Lua script, never read-modify-written from Python:

- deferred actions (a release after a hold time, a drain that had to wait): a sorted set scored
  by due time; whoever removes a due entry (``ZREM`` inside the script) runs it;
- crash counting per revision within a window: a sorted set of event ids scored by time;
- the cluster-wide quarantine cap: a set of quarantined nodes that a script admits a node to
  only while the count (with the nodes cordoned for other reasons) is under the cap;
- a short lock per service around traffic changes (a merge patch replaces the whole split).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from functions._context import Context
from functions._errors import TemporaryFunctionError


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --- deferred actions ---------------------------------------------------------------------

_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local out = {}
for _, m in ipairs(due) do
  if string.sub(m, 1, string.len(ARGV[2])) == ARGV[2] then
    if redis.call('ZREM', KEYS[1], m) == 1 then out[#out + 1] = m end
  end
end
return out
"""


def defer(ctx: Context, member: str, due: float) -> None:
    """Run ``member`` (``function|action|subject``) at ``due`` (context clock, seconds)."""
    ctx.redis.zadd(ctx.key("deferred"), {member: due})


def cancel(ctx: Context, member: str) -> bool:
    return bool(ctx.redis.zrem(ctx.key("deferred"), member))


def deferred_at(ctx: Context, member: str) -> float | None:
    score = ctx.redis.zscore(ctx.key("deferred"), member)
    return float(score) if score is not None else None


def take_due(ctx: Context, prefix: str) -> list[str]:
    """Claim the deferred members starting with ``prefix`` that are due now (atomically: each
    is handed to exactly one caller)."""
    got = ctx.script(_TAKE_DUE)(keys=[ctx.key("deferred")], args=[repr(ctx.clock()), prefix])
    return [_s(m) for m in got or []]


def deferred(ctx: Context) -> list[tuple[str, float]]:
    rows: Any = ctx.redis.zrange(ctx.key("deferred"), 0, -1, withscores=True)
    return [(_s(m), float(score)) for m, score in rows]


# --- crash counting -----------------------------------------------------------------------

_COUNT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""


def count_in_window(ctx: Context, key: str, member: str, window_s: float) -> int:
    """Add ``member`` at now and return how many members fall within the last ``window_s``.
    A member added twice (a redelivered event) counts once."""
    now = ctx.clock()
    n = ctx.script(_COUNT)(keys=[key], args=[repr(now), member, repr(now - window_s),
                                              max(1, int(window_s * 1000)) + 60_000])
    return int(n)


# --- quarantine cap -----------------------------------------------------------------------

_ADMIT = """
-- KEYS[1] set of quarantined nodes. ARGV[1] node, ARGV[2] cap, ARGV[3] '1' = only check,
-- ARGV[4] nodes out of service for other reasons (cordoned by someone else),
-- ARGV[5..] members to forget first (nodes that no longer exist).
for i = 5, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
local n = redis.call('SCARD', KEYS[1]) + tonumber(ARGV[4])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {'member', n} end
if n >= tonumber(ARGV[2]) then return {'capped', n} end
if ARGV[3] ~= '1' then redis.call('SADD', KEYS[1], ARGV[1]) end
return {'admitted', n + 1}
"""


@dataclass(frozen=True)
class Admission:
    verdict: str  # admitted | member | capped
    count: int  # quarantined nodes, this one included when admitted
    cap: int


def admit(ctx: Context, node: str, cap: int, *, check_only: bool = False,
          forget: Sequence[str] = (), others: int = 0) -> Admission:
    """Admit ``node`` to the quarantined set if fewer than ``cap`` nodes are out of service:
    those in the set plus ``others`` (nodes cordoned for another reason)."""
    verdict, n = ctx.script(_ADMIT)(keys=[ctx.key("quarantined")],
                                    args=[node, cap, "1" if check_only else "0", others,
                                          *forget])
    return Admission(_s(verdict), int(n), cap)


def discharge(ctx: Context, node: str) -> bool:
    return bool(ctx.redis.srem(ctx.key("quarantined"), node))


def quarantined(ctx: Context) -> list[str]:
    return sorted(_s(m) for m in ctx.redis.smembers(ctx.key("quarantined")))


# --- lock ---------------------------------------------------------------------------------

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def locked(ctx: Context, name: str, *, ttl_s: float = 30.0, wait_s: float = 10.0) -> Iterator[None]:
    """A mutual-exclusion lock in Redis (SET NX PX with a token, released only by its holder).
    Waits up to ``wait_s`` (real time, polling), then raises a temporary error."""
    key = ctx.key("lock", name)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    delay = 0.002
    while not ctx.redis.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))):
        if time.monotonic() >= deadline:
            raise TemporaryFunctionError(f"lock {name} is held by another handler; retry later")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        yield
    finally:
        with contextlib.suppress(redis.RedisError):  # else it expires with its TTL
            ctx.script(_UNLOCK)(keys=[key], args=[token])

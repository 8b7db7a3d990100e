"""The breakers' Redis operations: every change of state is one atomic Lua script.

An event-driven function needs to open a breaker before any request fails, without threads or
a local view: :class:`BreakerStore` is that face, and the registry's writer and subscription use
it too. Each state change runs one script of :mod:`knative.breakers._lua` on the breaker's two
keys, so the read that decides a transition and the write that makes it are one step on the
server, with Redis ``TIME`` as the clock; nothing here reads, decides, then writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from knative.breakers._lua import SCRIPTS
from knative.breakers._settings import BreakerRegistrySettings
from knative.breakers._states import (
    ACTIONS,
    CLOSED,
    BreakerError,
    BreakerStatus,
    BreakerUnavailable,
    Transition,
    TransitionHook,
    check_key,
    kind_of,
    seconds_of_ms,
)

log = logging.getLogger(__name__)

_FIELDS = ("state", "gen", "since", "until", "opens", "reason")
_DOWN = (redis.ConnectionError, redis.TimeoutError)


def text(v: Any) -> str:
    """A Redis reply as ``str``."""
    return v.decode() if isinstance(v, bytes) else str(v)


def _transition(key: str, r: list[Any]) -> Transition:
    # {'T', old, new, gen, at_ms, until_ms, reason, opens}
    return Transition(
        key=key,
        old=text(r[1]),
        new=text(r[2]),
        generation=int(r[3]),
        at=int(r[4]) / 1000.0,
        until=seconds_of_ms(r[5]),
        reason=text(r[6]),
        opens=int(r[7]),
    )


def _status(key: str, row: list[Any]) -> BreakerStatus:
    state, gen, since, until, opens, reason = row
    return BreakerStatus(
        key=key,
        state=text(state) if state else CLOSED,
        generation=int(gen or 0),
        since=seconds_of_ms(since),
        until=seconds_of_ms(until),
        opens=int(opens or 0),
        reason=text(reason) if reason else "",
    )


def command_client(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: one try per command, short timeouts (the default client
    retries three times with backoff, which would multiply every wait on a dead server)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def subscription_client(url: str, connect_timeout: float) -> redis.Redis:
    """A client for a subscription: it waits for messages without a read timeout, keeps the
    connection alive, and fails fast on connect."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )


def open_pubsub(client: redis.Redis) -> PubSub:
    """A pub/sub connection that does not report its own subscribe confirmations."""
    ps: PubSub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    return ps


class BreakerStore:
    """The breakers' Redis operations: atomic scripts, no threads, no local state.

    Every method raises :class:`BreakerUnavailable` when Redis does not answer within the
    client's timeout. Methods that change a state return the :class:`Transition` they made, or
    ``None`` when the breaker was not in a state the action applies to (e.g. ``open`` on a
    forced-closed breaker: the operator's word wins). ``on_transition`` is called for every
    transition this store made (not for those made by other processes).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: BreakerRegistrySettings,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_transition = on_transition
        self.clock_offset_ms = 0  # test seam: added to Redis TIME inside every script
        self.channel = f"{settings.prefix}:transitions"
        self.index = f"{settings.prefix}:index"
        self._ttl_ms = int(settings.idle_ttl * 1000)
        self._encoded: dict[str, str] = {}
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}

    @classmethod
    def from_url(
        cls, settings: BreakerRegistrySettings, on_transition: TransitionHook | None = None
    ) -> BreakerStore:
        client = command_client(settings.redis_url, settings.redis_timeout)
        return cls(client, settings, on_transition)

    # --- keys and policy --------------------------------------------------------------------

    def keys_of(self, key: str) -> list[str]:
        """The breaker's two Redis keys (state hash, window), which share a hash tag."""
        base = f"{self.settings.prefix}:{{{key}}}"
        return [base, base + ":w"]

    def _policy(self, key: str) -> str:
        kind = kind_of(key)
        enc = self._encoded.get(kind)
        if enc is None:
            enc = self.settings.policy_for(key).encode(self._ttl_ms)
            self._encoded[kind] = enc
        return enc

    def _run(self, name: str, key: str, *extra: Any, client: Any = None) -> Any:
        args = [self.clock_offset_ms, self.channel, key, self._policy(key), *extra]
        try:
            return self._scripts[name](keys=self.keys_of(key), args=args, client=client)
        except _DOWN as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        except redis.RedisError as exc:
            raise BreakerError(f"breaker script {name} failed: {exc}") from exc

    def _made(self, key: str, r: list[Any]) -> Transition | None:
        if not r or text(r[0]) != "T":
            return None
        t = _transition(key, r)
        self._index(key)
        self._emit(t)
        return t

    def _index(self, key: str) -> None:
        try:
            self.client.sadd(self.index, key)
        except redis.RedisError as exc:  # the periodic re-read tolerates a missing entry
            log.debug("could not index breaker %s: %s", key, exc)

    def _emit(self, t: Transition) -> None:
        log.info("breaker %s: %s -> %s (%s)", t.key, t.old, t.new, t.reason)
        if self.on_transition is not None:
            try:
                self.on_transition(t)
            except Exception:  # a broken hook must not break the breaker
                log.exception("breaker transition hook failed for %s", t.key)

    # --- state changes ----------------------------------------------------------------------

    def act(
        self, key: str, action: str, reason: str = "", expected_generation: int | None = None
    ) -> Transition | None:
        """Apply ``action`` (one of :data:`ACTIONS`) to ``key`` atomically.

        With ``expected_generation`` the action applies only while the breaker is still in
        that generation (a compare-and-set on the state).
        """
        check_key(key)
        if action not in ACTIONS:
            raise BreakerError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        reason = reason or action.replace("_", " ")
        expected = "" if expected_generation is None else str(int(expected_generation))
        return self._made(key, self._run("set", key, action, reason[:500], expected))

    def open(
        self, key: str, reason: str, expected_generation: int | None = None
    ) -> Transition | None:
        return self.act(key, "open", reason, expected_generation)

    def half_open(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "half_open", reason)

    def close(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "close", reason)

    def force_open(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "force_open", reason)

    def force_closed(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "force_closed", reason)

    def disable(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "disable", reason)

    def reset(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "reset", reason)

    def record(self, key: str, generation: int, outcomes: str) -> tuple[bool, Transition | None]:
        """Add results (``s`` ok, ``f`` failed, ``S``/``F`` the same but slow) permitted under
        ``generation``. Returns (applied, transition); results of another generation are
        dropped (applied False)."""
        r = self._run("record", key, generation, outcomes)
        return text(r[0]) != "D", self._made(key, r)

    def record_many(
        self, batch: Mapping[tuple[str, int], str]
    ) -> list[tuple[str, bool, Transition | None]]:
        """Several :meth:`record` calls in one round trip (each one script, atomic on its
        breaker; the pipeline only saves round trips)."""
        if not batch:
            return []
        if len(batch) == 1:
            ((key, gen), out), = batch.items()
            applied, t = self.record(key, gen, out)
            return [(key, applied, t)]
        pipe = self.client.pipeline(transaction=False)
        items = list(batch.items())
        for (key, gen), out in items:
            self._run("record", key, gen, out, client=pipe)
        try:
            results = pipe.execute()
        except _DOWN as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        except redis.RedisError as exc:
            raise BreakerError(f"breaker record failed: {exc}") from exc
        return [
            (key, text(r[0]) != "D", self._made(key, r))
            for ((key, _gen), _out), r in zip(items, results, strict=True)
        ]

    def acquire(self, key: str) -> tuple[int | None, Transition | None]:
        """A half-open permit: (generation, transition) or (None, transition). An open breaker
        whose wait has elapsed is moved to half-open first (that is the transition)."""
        r = self._run("acquire", key)
        gen = int(r[1]) if text(r[0]) == "P" else None
        return gen, self._made(key, r[2:])

    def tick(self, key: str) -> Transition | None:
        """The time-driven moves of one breaker (open -> half-open, stuck half-open -> open)."""
        return self._made(key, self._run("tick", key))

    # --- reads ------------------------------------------------------------------------------

    def status(self, key: str) -> BreakerStatus:
        check_key(key)
        try:
            row = self.client.hmget(self.keys_of(key)[0], list(_FIELDS))
        except _DOWN as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        return _status(key, row)

    def statuses(self) -> tuple[list[BreakerStatus], float]:
        """Every indexed breaker, and Redis time (seconds) of the read. Index entries whose
        breaker expired are pruned."""
        try:
            keys = sorted(text(k) for k in self.client.smembers(self.index))
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(self.keys_of(k)[0], list(_FIELDS))
            for k in keys:
                pipe.exists(*self.keys_of(k))
            pipe.time()
            res = pipe.execute()
        except _DOWN as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        n = len(keys)
        rows, exists, (sec, usec) = res[:n], res[n : 2 * n], res[-1]
        gone = [k for k, e in zip(keys, exists, strict=True) if not e]
        if gone:
            try:
                self.client.srem(self.index, *gone)
            except redis.RedisError as exc:  # pruned on a later read
                log.debug("could not prune %d expired breakers: %s", len(gone), exc)
        out = [_status(k, row) for k, row, e in zip(keys, rows, exists, strict=True) if e]
        return out, int(sec) + int(usec) / 1e6 + self.clock_offset_ms / 1000.0

    def time(self) -> float:
        """Redis time in seconds (with the test offset)."""
        try:
            sec, usec = self.client.time()
        except _DOWN as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        return int(sec) + int(usec) / 1e6 + self.clock_offset_ms / 1000.0

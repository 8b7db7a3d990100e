"""Circuit breakers shared through Redis, with a local view on the request path.

An in-process breaker learns about a failing replica only by failing into it, once per process.
Here every breaker (one per revision, node or replica) lives in Redis; every change of state is a
Lua script (:mod:`knative.breakers._lua`) that is atomic with the read that decided it and uses
Redis ``TIME`` as the clock. Transitions are published; each process keeps a local view fed by
its subscription, so asking "may I call this target?" reads memory only. Results are queued in
memory and written in batches by a background thread (a failure wakes it at once), so a request
never pays a Redis round trip in steady state.

When Redis is unreachable the view fails static: it keeps the last known states, counts results
locally (and may open a breaker for this process alone), logs once, and recovers by itself; a
reconnect re-reads every breaker, and a periodic re-read bounds how stale a view can be.

Two faces:

- :class:`BreakerStore` — the Redis operations, synchronous, no threads. Event-driven functions
  use it to ``open(key, reason)`` a breaker before any request fails.
- :class:`BreakerRegistry` — a store plus the local view, the subscription thread and the
  batching writer. Gateways use it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from knative.breakers._lua import SCRIPTS

log = logging.getLogger(__name__)

# States. Strings on the wire and in Redis.
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
FORCED_OPEN = "forced_open"
FORCED_CLOSED = "forced_closed"
DISABLED = "disabled"
STATES = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED, DISABLED)

# What an operator or an event-driven function can ask for.
ACTIONS = ("open", "half_open", "close", "force_open", "force_closed", "disable", "reset")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@=-]{0,252}$")


class BreakerError(Exception):
    """Base of the breaker errors; ``temporary`` ones are worth a retry."""

    temporary = False


class BreakerUnavailable(BreakerError):
    """Redis did not answer in time (down, partitioned, restarting)."""

    temporary = True


class InvalidBreakerKey(BreakerError, ValueError):
    """A key that cannot name a breaker (empty, too long, braces or spaces in it)."""


class InvalidBreakerSettings(BreakerError, ValueError):
    """Settings out of range; the message names every bad field."""


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidBreakerKey(
            f"breaker key {key!r} is not valid: use 1-253 characters of letters, digits and "
            "._:/@=- (e.g. revision:primary, node:node-1, replica:primary-0)"
        )
    return key


def revision_key(revision: str) -> str:
    return f"revision:{revision}"


def node_key(node: str) -> str:
    return f"node:{node}"


def replica_key(replica: str) -> str:
    return f"replica:{replica}"


@dataclass(frozen=True)
class BreakerSettings:
    """The policy of one kind of breaker. Durations in seconds, rates in 0..1.

    ``window`` is ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the calls of the
    last ``window_size`` seconds). The breaker opens when at least ``minimum_calls`` are in the
    window and the failure rate or the slow-call rate (calls of ``slow_call_duration`` or more)
    reaches its threshold. It waits ``wait_in_open``, multiplied by ``wait_backoff`` for each
    further open without a successful close in between (capped at ``max_wait_in_open``), then
    lets ``permitted_calls_in_half_open`` probes through; their results close or re-open it.
    Probes that have not all reported after ``max_wait_in_half_open`` re-open it (0: wait).
    """

    window: str = "count"
    window_size: int = 50
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float = 30.0
    wait_in_open: float = 5.0
    wait_backoff: float = 2.0
    max_wait_in_open: float = 60.0
    permitted_calls_in_half_open: int = 3
    max_wait_in_half_open: float = 30.0

    def __post_init__(self) -> None:
        errors = []
        if self.window not in ("count", "time"):
            errors.append(f"window: {self.window!r} is not 'count' or 'time'")
        if not isinstance(self.window_size, int) or not 1 <= self.window_size <= 100_000:
            errors.append(f"window_size: {self.window_size!r} is not an integer in 1..100000")
        elif self.window == "time" and self.window_size > 3600:
            errors.append(f"window_size: {self.window_size} s is over 3600 for a time window")
        if not isinstance(self.minimum_calls, int) or self.minimum_calls < 1:
            errors.append(f"minimum_calls: {self.minimum_calls!r} is not an integer >= 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 < v <= 1:
                errors.append(f"{name}: {v!r} is not within (0, 1]")
        for name in ("slow_call_duration", "wait_in_open", "max_wait_in_open"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 < v < 1e7:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        if not isinstance(self.wait_backoff, int | float) or not 1 <= self.wait_backoff <= 100:
            errors.append(f"wait_backoff: {self.wait_backoff!r} is not within 1..100")
        if (
            isinstance(self.max_wait_in_open, int | float)
            and isinstance(self.wait_in_open, int | float)
            and self.max_wait_in_open < self.wait_in_open
        ):
            errors.append(
                f"max_wait_in_open: {self.max_wait_in_open} is below wait_in_open {self.wait_in_open}"
            )
        if (
            not isinstance(self.permitted_calls_in_half_open, int)
            or self.permitted_calls_in_half_open < 1
        ):
            errors.append(
                f"permitted_calls_in_half_open: {self.permitted_calls_in_half_open!r} is not an "
                "integer >= 1"
            )
        v = self.max_wait_in_half_open
        if not isinstance(v, int | float) or not 0 <= v < 1e7:
            errors.append(f"max_wait_in_half_open: {v!r} is not a number of seconds >= 0")
        if errors:
            raise InvalidBreakerSettings("; ".join(errors))

    def encode(self, ttl_ms: int) -> str:
        """The policy as the scripts read it (ARGV[4])."""
        return "|".join(
            [
                self.window,
                str(self.window_size),
                str(self.minimum_calls),
                repr(float(self.failure_rate_threshold)),
                repr(float(self.slow_call_rate_threshold)),
                str(int(self.wait_in_open * 1000)),
                repr(float(self.wait_backoff)),
                str(int(self.max_wait_in_open * 1000)),
                str(self.permitted_calls_in_half_open),
                str(int(self.max_wait_in_half_open * 1000)),
                str(int(ttl_ms)),
            ]
        )


@dataclass(frozen=True)
class BreakerRegistrySettings:
    """Where the breakers live and how a process keeps its view of them.

    ``policies`` overrides ``policy`` per kind of key (the part before the first ``:``, e.g.
    ``{"node": BreakerSettings(...)}``). Every process must use the same policies: they travel
    with each script call.
    """

    redis_url: str
    policy: BreakerSettings = field(default_factory=BreakerSettings)
    policies: Mapping[str, BreakerSettings] = field(default_factory=dict)
    prefix: str = "surefoot:breaker"
    refresh_interval: float = 2.0  # full re-read at least this often (the staleness bound)
    flush_interval: float = 0.02  # how long a success waits in memory before it is written
    redis_timeout: float = 0.1  # per Redis command; the request path waits no longer
    reconnect_interval: float = 0.25
    max_pending: int = 20_000  # results kept in memory while Redis is away
    idle_ttl: float = 86_400.0  # a closed breaker with no writes for this long is forgotten

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.redis_url, str) or not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            errors.append(f"redis_url: {self.redis_url!r} is not a redis:// URL")
        for name in ("refresh_interval", "flush_interval", "redis_timeout", "reconnect_interval"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 < v <= 3600:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        if not isinstance(self.max_pending, int) or self.max_pending < 1:
            errors.append(f"max_pending: {self.max_pending!r} is not an integer >= 1")
        if not isinstance(self.idle_ttl, int | float) or self.idle_ttl < 0:
            errors.append(f"idle_ttl: {self.idle_ttl!r} is not a number of seconds >= 0")
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            errors.append(f"prefix: {self.prefix!r} must be non-empty and without braces")
        for kind, p in dict(self.policies).items():
            if not isinstance(p, BreakerSettings):
                errors.append(f"policies[{kind!r}]: not a BreakerSettings")
        if errors:
            raise InvalidBreakerSettings("; ".join(errors))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> BreakerRegistrySettings:
        """Settings every process builds the same way (policies must agree across processes).

        ``SUREFOOT_REDIS_URL``; the policy from ``SUREFOOT_BREAKER_<FIELD>`` (e.g.
        ``SUREFOOT_BREAKER_WAIT_IN_OPEN=10``); per kind of key from
        ``SUREFOOT_BREAKER_<KIND>_<FIELD>`` (KIND: REVISION, NODE, REPLICA); the process
        settings from ``SUREFOOT_BREAKER_<FIELD>`` too (``REFRESH_INTERVAL``, ``PREFIX``, ...).
        Then ``overrides`` that are not None.
        """
        env = os.environ if env is None else env
        errors: list[str] = []

        def read(cls_: Any, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in fields(cls_):
                key = f"{prefix}{f.name.upper()}"
                if f.name in skip or key not in env:
                    continue
                raw = env[key]
                try:
                    out[f.name] = _env_value(str(f.type), raw)
                except ValueError:
                    errors.append(f"{key}: {raw!r} is not a valid {f.type}")
            return out

        base = read(BreakerSettings, "SUREFOOT_BREAKER_")
        kinds = {k: read(BreakerSettings, f"SUREFOOT_BREAKER_{k.upper()}_")
                 for k in ("revision", "node", "replica")}
        values = read(cls, "SUREFOOT_BREAKER_", skip=("redis_url", "policy", "policies"))
        if "SUREFOOT_REDIS_URL" in env:
            values["redis_url"] = env["SUREFOOT_REDIS_URL"]
        if errors:
            raise InvalidBreakerSettings("; ".join(errors))
        policy = BreakerSettings(**base)
        values["policy"] = policy
        values["policies"] = {k: replace(policy, **v) for k, v in kinds.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "redis_url" not in values:
            raise InvalidBreakerSettings("redis_url: set SUREFOOT_REDIS_URL")
        return cls(**values)

    def policy_for(self, key: str) -> BreakerSettings:
        kind = key.split(":", 1)[0]
        return self.policies.get(kind, self.policy)


@dataclass(frozen=True)
class Transition:
    """One change of a breaker's state, as the script that made it reported it."""

    key: str
    old: str
    new: str
    generation: int
    at: float  # Redis time, seconds since the epoch
    until: float | None  # end of the wait in open (Redis time), for ``open``
    reason: str
    opens: int = 0  # opens since the last successful close (drives the backoff)


@dataclass(frozen=True)
class BreakerStatus:
    key: str
    state: str
    generation: int
    since: float | None = None  # Redis time of the last transition
    until: float | None = None
    opens: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "state": self.state,
            "generation": self.generation,
            "since": self.since,
            "until": self.until,
            "opens": self.opens,
            "reason": self.reason,
        }


class Permit(NamedTuple):
    """Leave to call a target; hand it back to :meth:`BreakerRegistry.record` with the result."""

    key: str
    generation: int
    counted: bool  # False in forced-closed / disabled: the result is not recorded


TransitionHook = Callable[[Transition], None]

_FIELDS = ("state", "gen", "since", "until", "opens", "reason")


def _env_value(kind: str, raw: str) -> Any:
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def _ms(v: Any) -> float | None:
    n = int(v or 0)
    return n / 1000.0 if n else None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _transition(key: str, r: list[Any]) -> Transition:
    # {'T', old, new, gen, at_ms, until_ms, reason, opens}
    return Transition(
        key=key,
        old=_s(r[1]),
        new=_s(r[2]),
        generation=int(r[3]),
        at=int(r[4]) / 1000.0,
        until=_ms(r[5]),
        reason=_s(r[6]),
        opens=int(r[7]),
    )


def _status(key: str, row: list[Any]) -> BreakerStatus:
    state, gen, since, until, opens, reason = row
    return BreakerStatus(
        key=key,
        state=_s(state) if state else CLOSED,
        generation=int(gen or 0),
        since=_ms(since),
        until=_ms(until),
        opens=int(opens or 0),
        reason=_s(reason) if reason else "",
    )


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
        return cls(_client(settings.redis_url, settings.redis_timeout), settings, on_transition)

    # --- keys and policy --------------------------------------------------------------------

    def keys_of(self, key: str) -> list[str]:
        base = f"{self.settings.prefix}:{{{key}}}"
        return [base, base + ":w"]

    def _policy(self, key: str) -> str:
        kind = key.split(":", 1)[0]
        enc = self._encoded.get(kind)
        if enc is None:
            enc = self.settings.policy_for(key).encode(self._ttl_ms)
            self._encoded[kind] = enc
        return enc

    def _run(self, name: str, key: str, *extra: Any, client: Any = None) -> Any:
        args = [self.clock_offset_ms, self.channel, key, self._policy(key), *extra]
        try:
            return self._scripts[name](keys=self.keys_of(key), args=args, client=client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        except redis.RedisError as exc:
            raise BreakerError(f"breaker script {name} failed: {exc}") from exc

    def _made(self, key: str, r: list[Any]) -> Transition | None:
        if not r or _s(r[0]) != "T":
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

    def open(self, key: str, reason: str, expected_generation: int | None = None) -> Transition | None:
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
        return _s(r[0]) != "D", self._made(key, r)

    def record_many(
        self, batch: Mapping[tuple[str, int], str]
    ) -> list[tuple[str, bool, Transition | None]]:
        """Several :meth:`record` calls in one round trip."""
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
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        except redis.RedisError as exc:
            raise BreakerError(f"breaker record failed: {exc}") from exc
        out_list = []
        for ((key, _gen), _o), r in zip(items, results, strict=True):
            out_list.append((key, _s(r[0]) != "D", self._made(key, r)))
        return out_list

    def acquire(self, key: str) -> tuple[int | None, Transition | None]:
        """A half-open permit: (generation, transition) or (None, transition). An open breaker
        whose wait has elapsed is moved to half-open first (that is the transition)."""
        r = self._run("acquire", key)
        gen = int(r[1]) if _s(r[0]) == "P" else None
        return gen, self._made(key, r[2:])

    def tick(self, key: str) -> Transition | None:
        """The time-driven moves of one breaker (open -> half-open, stuck half-open -> open)."""
        return self._made(key, self._run("tick", key))

    # --- reads ------------------------------------------------------------------------------

    def status(self, key: str) -> BreakerStatus:
        check_key(key)
        try:
            row = self.client.hmget(self.keys_of(key)[0], list(_FIELDS))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        return _status(key, row)

    def statuses(self) -> tuple[list[BreakerStatus], float]:
        """Every indexed breaker, and Redis time (seconds) of the read. Index entries whose
        breaker expired are pruned."""
        try:
            keys = sorted(_s(k) for k in self.client.smembers(self.index))
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(self.keys_of(k)[0], list(_FIELDS))
            for k in keys:
                pipe.exists(*self.keys_of(k))
            pipe.time()
            res = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        n = len(keys)
        rows, exists, (sec, usec) = res[:n], res[n : 2 * n], res[-1]
        gone = [k for k, e in zip(keys, exists, strict=True) if not e]
        if gone:
            try:
                self.client.srem(self.index, *gone)
            except redis.RedisError:
                pass
        out = [_status(k, row) for k, row, e in zip(keys, rows, exists, strict=True) if e]
        return out, int(sec) + int(usec) / 1e6 + self.clock_offset_ms / 1000.0

    def time(self) -> float:
        """Redis time in seconds (with the test offset)."""
        try:
            sec, usec = self.client.time()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BreakerUnavailable(f"redis did not answer: {exc}") from exc
        return int(sec) + int(usec) / 1e6 + self.clock_offset_ms / 1000.0


def _client(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: one try per command, short timeouts (the default client
    retries three times with backoff, which would multiply every wait on a dead server)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


class _Entry:
    """One breaker in the local view. Replaced whole on every change (readers never see a
    half-updated entry)."""

    __slots__ = ("gen", "opens", "probes", "reason", "since", "state", "until", "updated")

    def __init__(self, st: BreakerStatus) -> None:
        self.state = st.state
        self.gen = st.generation
        self.since = st.since
        self.until = st.until
        self.opens = st.opens
        self.reason = st.reason
        self.updated = time.monotonic()
        # half-open: -1 unknown, 0 known exhausted (for this generation); fail static: local
        # probes left while Redis is away.
        self.probes = -1

    def status(self, key: str) -> BreakerStatus:
        return BreakerStatus(
            key, self.state, self.gen, self.since, self.until, self.opens, self.reason
        )


class _LocalWindow:
    """Results counted in memory while Redis is away (fail static)."""

    __slots__ = ("calls",)

    def __init__(self, size: int) -> None:
        self.calls: deque[tuple[float, str]] = deque(maxlen=size)


class BreakerRegistry:
    """The local view of every breaker, kept current by a subscription, and the batching writer.

    Request path (memory only, no Redis round trip except to take a half-open probe):
    :meth:`acquire` -> call the target -> :meth:`record`. :meth:`allows` answers without taking
    anything (to filter candidates).

    ``start=False`` builds it without threads; tests then drive it with :meth:`refresh`,
    :meth:`flush` and :meth:`tick`.
    """

    def __init__(
        self,
        settings: BreakerRegistrySettings,
        on_transition: TransitionHook | None = None,
        *,
        store: BreakerStore | None = None,
        start: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store or BreakerStore.from_url(settings, on_transition)
        self._view: dict[str, _Entry] = {}
        self._pending: deque[tuple[str, int, str]] = deque(maxlen=settings.max_pending)
        self._local: dict[str, _LocalWindow] = {}
        self._local_open: dict[str, float] = {}  # key -> monotonic end of a local open
        self._slow: dict[str, float] = {}
        self._skew = 0.0  # Redis time minus local time.time(), seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # serialises view replacement against applies
        self._sub_ok = False
        self._flush_ok = True
        self._degraded_logged = False
        self._last_refresh = 0.0
        self._refreshed = threading.Event()
        self._next_tick: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._pubsub_client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout,
            socket_timeout=None,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._pubsub: Any = None
        if start:
            self.start()
        else:
            self._sub_ok = True  # no subscription to lose; failed writes still mark degraded

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> BreakerRegistry:
        if self._threads:
            return self
        for name, target in (("subscriber", self._subscribe_loop), ("writer", self._write_loop)):
            t = threading.Thread(target=target, name=f"breaker-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the first full read of Redis landed (or ``timeout``)."""
        return self._refreshed.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        ps = self._pubsub
        if ps is not None:
            try:
                ps.close()
            except Exception:
                pass
        for t in self._threads:
            t.join(2.0)
        self._threads = []
        try:
            self.flush()
        except BreakerError:
            pass
        self.store.client.close()
        self._pubsub_client.close()

    def __enter__(self) -> BreakerRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def degraded(self) -> bool:
        """True while Redis is away (the view is failing static)."""
        return not (self._sub_ok and self._flush_ok)

    @property
    def view_age(self) -> float:
        """Seconds since the view was last confirmed against Redis."""
        return time.monotonic() - self._last_refresh if self._last_refresh else math.inf

    # --- request path -----------------------------------------------------------------------

    def allows(self, key: str) -> bool:
        """Would :meth:`acquire` let a call through (without taking a half-open probe)?"""
        if self._local_open and key in self._local_open and self._local_closed(key):
            return False
        e = self._view.get(key)
        if e is None:
            return True
        st = e.state
        if st == CLOSED or st == FORCED_CLOSED or st == DISABLED:
            return True
        if st == HALF_OPEN:
            return e.probes != 0
        if st == OPEN:
            return self.degraded and self._now() >= (e.until or 0)
        return False

    def acquire(self, key: str) -> Permit | None:
        """Leave to call the target behind ``key`` now, or ``None``."""
        if self._local_open and key in self._local_open and self._local_closed(key):
            return None
        e = self._view.get(key)
        if e is None:
            return Permit(key, 0, True)
        st = e.state
        if st == CLOSED:
            return Permit(key, e.gen, True)
        if st == FORCED_CLOSED or st == DISABLED:
            return Permit(key, e.gen, False)
        if st == HALF_OPEN:
            return self._probe(key, e)
        if st == OPEN and self.degraded and self._now() >= (e.until or 0):
            # Redis is away and the wait is over: let calls through, counted locally.
            return Permit(key, e.gen, True)
        return None

    def record(self, permit: Permit, ok: bool, seconds: float) -> None:
        """The result of a call made under ``permit``; written asynchronously in a batch."""
        if not permit.counted:
            return
        key = permit.key
        slow = self._slow.get(key)
        if slow is None:
            slow = self.settings.policy_for(key).slow_call_duration
            self._slow[key] = slow
        code = "s" if ok else "f"
        if seconds >= slow:
            code = code.upper()
        self._pending.append((key, permit.generation, code))
        if not ok or code == "S":
            self._wake.set()
        if self.degraded:
            self._count_locally(key, code)

    def state(self, key: str) -> str:
        e = self._view.get(key)
        return e.state if e else CLOSED

    def generation(self, key: str) -> int:
        e = self._view.get(key)
        return e.gen if e else 0

    def view(self) -> dict[str, BreakerStatus]:
        """A copy of the local view."""
        return {k: e.status(k) for k, e in list(self._view.items())}

    def locally_open(self) -> list[str]:
        """Keys this process opened on its own while Redis was away."""
        return [k for k in list(self._local_open) if self._local_closed(k)]

    # --- operators and functions --------------------------------------------------------------

    def act(self, key: str, action: str, reason: str = "") -> Transition | None:
        t = self.store.act(key, action, reason)
        if t is not None:
            self._apply_transition(t)
        return t

    def open(self, key: str, reason: str) -> Transition | None:
        return self.act(key, "open", reason)

    def half_open(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "half_open", reason)

    def close_breaker(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "close", reason)

    def force_open(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "force_open", reason)

    def force_closed(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "force_closed", reason)

    def disable(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "disable", reason)

    def reset(self, key: str, reason: str = "") -> Transition | None:
        return self.act(key, "reset", reason)

    def statuses(self) -> tuple[list[BreakerStatus], bool]:
        """Every breaker, read from Redis; the local view (and ``True`` for stale) when Redis
        is away."""
        try:
            rows, _ = self.store.statuses()
        except BreakerError:
            return sorted(self.view().values(), key=lambda s: s.key), True
        known = {s.key for s in rows}
        rows += [s for k, s in self.view().items() if k not in known]
        return sorted(rows, key=lambda s: s.key), False

    # --- background work (also callable directly) ----------------------------------------------

    def flush(self) -> list[Transition]:
        """Write the queued results now. Raises :class:`BreakerUnavailable` if Redis is away
        (the results stay queued)."""
        batch: dict[tuple[str, int], list[str]] = {}
        taken: list[tuple[str, int, str]] = []
        while True:
            try:
                item = self._pending.popleft()
            except IndexError:
                break
            taken.append(item)
            batch.setdefault((item[0], item[1]), []).append(item[2])
        if not batch:
            return []
        joined = {}
        for (key, gen), codes in batch.items():
            policy = self.settings.policy_for(key)
            if policy.window == "count" and len(codes) > policy.window_size:
                codes = codes[-policy.window_size :]  # older ones would leave the ring at once
            joined[(key, gen)] = "".join(codes)
        try:
            results = self.store.record_many(joined)
        except BreakerUnavailable:
            # Put them back (oldest first) for the next try; the deque's bound drops the oldest.
            self._pending.extendleft(reversed(taken))
            raise
        made = []
        for _key, _applied, t in results:
            if t is not None:
                self._apply_transition(t)
                made.append(t)
        return made

    def tick(self) -> list[Transition]:
        """Run the time-driven moves that are due by this process's estimate of Redis time."""
        now = self._now()
        mono = time.monotonic()
        made = []
        for key, e in list(self._view.items()):
            due = None
            if e.state == OPEN and e.until is not None:
                due = e.until
            elif e.state == HALF_OPEN and e.since is not None:
                hp_max = self.settings.policy_for(key).max_wait_in_half_open
                if hp_max > 0:
                    due = e.since + hp_max
            if due is None or now < due or mono < self._next_tick.get(key, 0.0):
                continue
            t = self.store.tick(key)
            if t is not None:
                self._apply_transition(t)
                made.append(t)
                self._next_tick.pop(key, None)
            else:  # our clock ran ahead of Redis's: look again shortly
                self._next_tick[key] = mono + 0.05
        return made

    def refresh(self, wholesale: bool = False) -> None:
        """Re-read every breaker from Redis into the view. ``wholesale`` forgets entries Redis
        no longer has (after a reconnect: the server may have restarted empty)."""
        started = time.monotonic()
        t0 = time.time()
        rows, redis_now = self.store.statuses()
        t1 = time.time()
        self._skew = redis_now - (t0 + t1) / 2
        with self._lock:
            new: dict[str, _Entry] = {}
            for st in rows:
                cur = self._view.get(st.key)
                if (
                    not wholesale
                    and cur is not None
                    and cur.gen > st.generation
                    and cur.updated > started
                ):
                    new[st.key] = cur  # a newer transition landed while we were reading
                elif cur is not None and cur.gen == st.generation and cur.state == st.state:
                    new[st.key] = cur  # unchanged: keep its probe bookkeeping
                else:
                    new[st.key] = _Entry(st)
            if not wholesale:
                for k, cur in self._view.items():
                    if k not in new and cur.updated > started:
                        new[k] = cur
            self._view = new
        self._last_refresh = time.monotonic()
        self._refreshed.set()

    # --- internals --------------------------------------------------------------------------

    def _now(self) -> float:
        return time.time() + self._skew + self.store.clock_offset_ms / 1000.0

    def _local_closed(self, key: str) -> bool:
        """True while ``key`` is open for this process alone; drops expired local opens."""
        until = self._local_open.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        self._local_open.pop(key, None)
        return False

    def _probe(self, key: str, e: _Entry) -> Permit | None:
        if e.probes == 0:
            return None
        if self.degraded:
            if e.probes < 0:
                e.probes = self.settings.policy_for(key).permitted_calls_in_half_open
            e.probes -= 1
            return Permit(key, e.gen, True)
        try:
            gen, t = self.store.acquire(key)
        except BreakerError as exc:
            self._set_flush_ok(False, exc)
            return None
        if t is not None:
            self._apply_transition(t)
        if gen is None:
            cur = self._view.get(key)
            if cur is not None and cur.gen == e.gen:
                cur.probes = 0
            return None
        return Permit(key, gen, True)

    def _count_locally(self, key: str, code: str) -> None:
        policy = self.settings.policy_for(key)
        w = self._local.get(key)
        if w is None:
            size = policy.window_size if policy.window == "count" else 100_000
            w = self._local[key] = _LocalWindow(size)
        now = time.monotonic()
        w.calls.append((now, code))
        if policy.window == "time":
            while w.calls and w.calls[0][0] < now - policy.window_size:
                w.calls.popleft()
        n = len(w.calls)
        if n < policy.minimum_calls:
            return
        fails = sum(1 for _, c in w.calls if c in "fF")
        slows = sum(1 for _, c in w.calls if c in "SF")
        if fails / n >= policy.failure_rate_threshold or slows / n >= policy.slow_call_rate_threshold:
            if not self._local_closed(key):
                log.warning(
                    "breaker %s opened locally (redis away): %d of %d calls failed", key, fails, n
                )
            self._local_open[key] = now + policy.wait_in_open
            w.calls.clear()

    def _apply_transition(self, t: Transition) -> None:
        with self._lock:
            cur = self._view.get(t.key)
            if cur is not None and cur.gen > t.generation:
                return
            self._view[t.key] = _Entry(
                BreakerStatus(t.key, t.new, t.generation, t.at, t.until, t.opens, t.reason)
            )

    def _apply_message(self, data: bytes) -> None:
        import json

        try:
            m = json.loads(data)
            t = Transition(
                key=str(m["key"]),
                old=str(m["old"]),
                new=str(m["new"]),
                generation=int(m["gen"]),
                at=int(m["at"]) / 1000.0,
                until=_ms(m.get("until")),
                reason=str(m.get("reason", "")),
                opens=int(m.get("opens", 0)),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed breaker message: %.200r", data)
            return
        self._apply_transition(t)

    def _set_sub_ok(self, ok: bool, exc: BaseException | None = None) -> None:
        was = self.degraded
        self._sub_ok = ok
        self._note_degraded(was, exc)

    def _set_flush_ok(self, ok: bool, exc: BaseException | None = None) -> None:
        was = self.degraded
        self._flush_ok = ok
        self._note_degraded(was, exc)

    def _note_degraded(self, was: bool, exc: BaseException | None) -> None:
        now = self.degraded
        if now and not was and not self._degraded_logged:
            self._degraded_logged = True
            log.warning(
                "breakers: redis unreachable (%s); keeping the last known states and counting "
                "locally until it is back",
                exc,
            )
        elif was and not now:
            self._local.clear()
            self._local_open.clear()
            if self._degraded_logged:
                self._degraded_logged = False
                log.warning("breakers: redis reachable again; view re-read")

    def _subscribe_loop(self) -> None:
        backoff = self.settings.reconnect_interval
        while not self._stop.is_set():
            ps = None
            try:
                ps = self._pubsub_client.pubsub(ignore_subscribe_messages=True)
                self._pubsub = ps
                ps.subscribe(self.store.channel)
                # Subscribed first, then read: a transition in between arrives as a message.
                self.refresh(wholesale=True)
                self._set_sub_ok(True)
                backoff = self.settings.reconnect_interval
                next_refresh = time.monotonic() + self.settings.refresh_interval
                while not self._stop.is_set():
                    wait = max(0.0, min(0.5, next_refresh - time.monotonic()))
                    msg = ps.get_message(timeout=wait)
                    if msg is not None and msg.get("type") == "message":
                        self._apply_message(msg["data"])
                    if time.monotonic() >= next_refresh:
                        self.refresh()
                        next_refresh = time.monotonic() + self.settings.refresh_interval
            except (redis.RedisError, BreakerError, OSError, ValueError, AttributeError) as exc:
                if self._stop.is_set():
                    break
                self._set_sub_ok(False, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass

    def _write_loop(self) -> None:
        retry_at = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.settings.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if not self._flush_ok and now < retry_at:
                continue
            try:
                if not self._flush_ok:
                    self.store.time()  # is it back? (flush and tick may not touch Redis)
                    self._set_flush_ok(True)
                self.flush()
                self.tick()
            except BreakerError as exc:
                self._set_flush_ok(False, exc)
                retry_at = now + self.settings.reconnect_interval
            except Exception:  # never let the writer die
                log.exception("breaker writer failed")
                retry_at = now + self.settings.reconnect_interval


def keys_for(revision: str, node: str | None, replica: str | None) -> list[str]:
    """The breaker keys a call to one replica is subject to, widest first."""
    keys = [revision_key(revision)]
    if node:
        keys.append(node_key(node))
    if replica:
        keys.append(replica_key(replica))
    return keys

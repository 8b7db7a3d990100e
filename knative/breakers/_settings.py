"""The breakers' settings: the policy of a kind of breaker, and where the breakers live.

Every process that touches a breaker must use the same policies (they travel with each script
call), so every entry point builds them the same way: :meth:`BreakerRegistrySettings.from_env`
over the environment it was given, read with :mod:`envreader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from envreader import env_fields
from knative.breakers._states import InvalidBreakerSettings, kind_of

ENV_PREFIX = "SUREFOOT_BREAKER_"
REDIS_URL_ENV = "SUREFOOT_REDIS_URL"
KINDS = ("revision", "node", "replica")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float)


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
        errors = self._window_errors() + self._rate_and_wait_errors()
        if errors:
            raise InvalidBreakerSettings("; ".join(errors))

    def _window_errors(self) -> list[str]:
        errors = []
        if self.window not in ("count", "time"):
            errors.append(f"window: {self.window!r} is not 'count' or 'time'")
        if not isinstance(self.window_size, int) or not 1 <= self.window_size <= 100_000:
            errors.append(f"window_size: {self.window_size!r} is not an integer in 1..100000")
        elif self.window == "time" and self.window_size > 3600:
            errors.append(f"window_size: {self.window_size} s is over 3600 for a time window")
        if not isinstance(self.minimum_calls, int) or self.minimum_calls < 1:
            errors.append(f"minimum_calls: {self.minimum_calls!r} is not an integer >= 1")
        return errors

    def _rate_and_wait_errors(self) -> list[str]:
        errors = []
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 < v <= 1:
                errors.append(f"{name}: {v!r} is not within (0, 1]")
        for name in ("slow_call_duration", "wait_in_open", "max_wait_in_open"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 < v < 1e7:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        if not _is_number(self.wait_backoff) or not 1 <= self.wait_backoff <= 100:
            errors.append(f"wait_backoff: {self.wait_backoff!r} is not within 1..100")
        top, bottom = self.max_wait_in_open, self.wait_in_open
        if _is_number(top) and _is_number(bottom) and top < bottom:
            errors.append(f"max_wait_in_open: {top} is below wait_in_open {bottom}")
        permitted = self.permitted_calls_in_half_open
        if not isinstance(permitted, int) or permitted < 1:
            errors.append(f"permitted_calls_in_half_open: {permitted!r} is not an integer >= 1")
        v = self.max_wait_in_half_open
        if not _is_number(v) or not 0 <= v < 1e7:
            errors.append(f"max_wait_in_half_open: {v!r} is not a number of seconds >= 0")
        return errors

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
            if not _is_number(v) or not 0 < v <= 3600:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        if not isinstance(self.max_pending, int) or self.max_pending < 1:
            errors.append(f"max_pending: {self.max_pending!r} is not an integer >= 1")
        if not _is_number(self.idle_ttl) or self.idle_ttl < 0:
            errors.append(f"idle_ttl: {self.idle_ttl!r} is not a number of seconds >= 0")
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            errors.append(f"prefix: {self.prefix!r} must be non-empty and without braces")
        for kind, p in dict(self.policies).items():
            if not isinstance(p, BreakerSettings):
                errors.append(f"policies[{kind!r}]: not a BreakerSettings")
        if errors:
            raise InvalidBreakerSettings("; ".join(errors))

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> BreakerRegistrySettings:
        """Settings every process builds the same way (policies must agree across processes).

        ``SUREFOOT_REDIS_URL``; the policy from ``SUREFOOT_BREAKER_<FIELD>`` (e.g.
        ``SUREFOOT_BREAKER_WAIT_IN_OPEN=10``); per kind of key from
        ``SUREFOOT_BREAKER_<KIND>_<FIELD>`` (KIND: REVISION, NODE, REPLICA); the process
        settings from ``SUREFOOT_BREAKER_<FIELD>`` too (``REFRESH_INTERVAL``, ``PREFIX``, ...).
        Then ``overrides`` that are not None. :class:`InvalidBreakerSettings` names every
        variable that does not convert.
        """
        base, errors = env_fields(BreakerSettings, ENV_PREFIX, env)
        kinds: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            kinds[kind], bad = env_fields(BreakerSettings, f"{ENV_PREFIX}{kind.upper()}_", env)
            errors.update(bad)
        values, bad = env_fields(cls, ENV_PREFIX, env, skip=("redis_url", "policy", "policies"))
        errors.update(bad)
        if errors:
            raise InvalidBreakerSettings("; ".join(f"{k}: {v}" for k, v in errors.items()))
        if REDIS_URL_ENV in env:
            values["redis_url"] = env[REDIS_URL_ENV]
        policy = BreakerSettings(**base)
        values["policy"] = policy
        values["policies"] = {k: replace(policy, **v) for k, v in kinds.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "redis_url" not in values:
            raise InvalidBreakerSettings(f"redis_url: set {REDIS_URL_ENV}")
        return cls(**values)

    def policy_for(self, key: str) -> BreakerSettings:
        """The policy of the breaker ``key`` (its kind's, else the default)."""
        return self.policies.get(kind_of(key), self.policy)

"""How the gateway calls upstream: one frozen settings object, built once in the entry point
from ``SUREFOOT_GATEWAY_<FIELD>`` variables (through :mod:`envreader`) and flags, checked on
construction so that a bad value fails at start with every bad field named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from envreader import env_values

ENV_PREFIX = "SUREFOOT_GATEWAY_"

_SECONDS = ("try_timeout", "connect_timeout", "deadline", "stream_idle_timeout", "pool_timeout",
            "stall_timeout_min", "stall_timeout_max", "queue_timeout",
            "first_event_timeout_min", "first_event_timeout_max")
_BACKOFF = ("backoff_base", "backoff_max")


class GatewaySettingsError(ValueError):
    """Gateway settings out of range; the message names every bad field (and, for a value
    read from the environment, its variable)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _is_number(v: object) -> bool:
    return isinstance(v, int | float)


def _int_in(v: object, lo: int, hi: int | None = None) -> bool:
    return isinstance(v, int) and lo <= v and (hi is None or v <= hi)


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway calls upstream. Durations in seconds.

    ``try_timeout`` bounds one try up to the response headers (and, for a stream, its first
    event); ``deadline`` bounds the whole request, streams included; ``stream_idle_timeout``
    bounds the gap between two stream chunks. ``max_tries`` counts tries on one revision before
    the fallback is asked.

    With ``internal_token`` (the replicas' ``SUREFOOT_INTERNAL_TOKEN``) streamed completions and
    chats are resumable: a stream that breaks, or sends nothing for ``stall_gap_factor`` times
    its replica's usual gap between events (kept within ``stall_timeout_min`` ..
    ``stall_timeout_max``), continues on another replica, at most ``max_resumes`` times.

    A try of a stream (and of a non-streamed completion or chat the gateway reads as a stream)
    that sends no first event within ``first_event_factor`` times its replica's usual time to
    the first event (kept within ``first_event_timeout_min`` .. ``first_event_timeout_max``)
    and does not answer a health check either is a stall too: its breakers record a failure
    and the request goes to another replica.

    A request that finds no ready replica to try waits for one instead of failing at once: at
    most ``queue_size`` requests wait (0: none; more are answered 503 at once), each at most
    ``queue_timeout`` and never past its deadline, looking again every ``queue_poll``.
    """

    try_timeout: float = 60.0
    connect_timeout: float = 1.0
    deadline: float = 300.0
    stream_idle_timeout: float = 30.0
    max_tries: int = 3
    retry_on_timeout: bool = False
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 3
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    pool_size: int = 64
    pool_timeout: float = 1.0
    max_body_bytes: int = 8 * 1024 * 1024
    admin_token: str | None = None
    instance: str = ""
    internal_token: str | None = None
    max_resumes: int = 3
    stall_timeout_min: float = 1.0
    stall_timeout_max: float = 10.0
    stall_gap_factor: float = 5.0
    first_event_timeout_min: float = 2.0
    first_event_timeout_max: float = 10.0
    first_event_factor: float = 4.0
    queue_size: int = 32
    queue_timeout: float = 30.0
    queue_poll: float = 0.02

    def __post_init__(self) -> None:
        errors = self._errors()
        if errors:
            raise GatewaySettingsError(errors)

    def _errors(self) -> list[str]:
        errors = []
        for name in _SECONDS:
            v = getattr(self, name)
            if not _is_number(v) or not 0 < v <= 86_400:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        for name in _BACKOFF:
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 60:
                errors.append(f"{name}: {v!r} is not within 0..60 seconds")
        if not _int_in(self.max_resumes, 0, 100):
            errors.append(f"max_resumes: {self.max_resumes!r} is not an integer in 0..100")
        for lo, hi in (("stall_timeout_min", "stall_timeout_max"),
                       ("first_event_timeout_min", "first_event_timeout_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if _is_number(a) and _is_number(b) and a > b:
                errors.append(f"{lo}: {a!r} is above {hi} ({b!r})")
        for name in ("stall_gap_factor", "first_event_factor"):
            f = getattr(self, name)
            if not _is_number(f) or not 1 <= f <= 1000:
                errors.append(f"{name}: {f!r} is not within 1..1000")
        if self.internal_token is not None and (
            not isinstance(self.internal_token, str) or len(self.internal_token) < 8
        ):
            errors.append("internal_token: use at least 8 characters (or none: no resume)")
        return errors + self._limit_errors()

    def _limit_errors(self) -> list[str]:
        errors = []
        if not _int_in(self.max_tries, 1, 10):
            errors.append(f"max_tries: {self.max_tries!r} is not an integer in 1..10")
        r = self.retry_budget_ratio
        if not _is_number(r) or not 0 <= r <= 1:
            errors.append(f"retry_budget_ratio: {r!r} is not within 0..1")
        if not _int_in(self.retry_budget_min, 0):
            errors.append(f"retry_budget_min: {self.retry_budget_min!r} is not an integer >= 0")
        if not _int_in(self.pool_size, 1, 10_000):
            errors.append(f"pool_size: {self.pool_size!r} is not an integer in 1..10000")
        if not _int_in(self.queue_size, 0, 100_000):
            errors.append(f"queue_size: {self.queue_size!r} is not an integer in 0..100000")
        p = self.queue_poll
        if not _is_number(p) or not 0 < p <= 1:
            errors.append(f"queue_poll: {p!r} is not within (0, 1] seconds")
        if not _int_in(self.max_body_bytes, 1):
            errors.append(f"max_body_bytes: {self.max_body_bytes!r} is not an integer >= 1")
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or len(self.admin_token) < 8
        ):
            errors.append("admin_token: use at least 8 characters (or none to disable admin)")
        return errors

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> GatewaySettings:
        """``SUREFOOT_GATEWAY_<FIELD>`` variables of ``env``, then ``overrides`` that are not
        None; :class:`GatewaySettingsError` names every bad variable and field."""
        values, errors = env_values(cls, ENV_PREFIX, env, overrides)
        if errors:
            raise GatewaySettingsError(errors)
        try:
            return replace(cls(), **values)
        except GatewaySettingsError as exc:
            raise GatewaySettingsError([_named(e, env) for e in exc.errors]) from None


def _named(error: str, env: Mapping[str, str]) -> str:
    """``error`` (``"field: why"``) led by the variable it came from, when it came from one."""
    field = error.split(":", 1)[0]
    var = ENV_PREFIX + field.upper()
    return f"{var} ({error})" if var in env else error

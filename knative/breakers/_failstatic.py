"""Fail static: what a process does about its breakers while Redis is away.

Breakers must never turn a Redis outage into a gateway outage. While the subscription or the
writer cannot reach Redis the process is *degraded*: the view keeps its last known states, and
results are also counted here, in memory, so a target failing meanwhile is opened for this
process alone. The outage is logged once, and when Redis answers again the local counts and
local opens are dropped (the view is re-read from Redis instead).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from knative.breakers._settings import BreakerRegistrySettings

log = logging.getLogger(__name__)

_TIME_WINDOW_CALLS = 100_000  # the bound of a time window counted in memory


class FailStatic:
    """Whether Redis is reachable (for the subscription and for writes), and the breakers this
    process opened on its own while it was not.

    ``subscribed`` starts False for a registry that will subscribe, True for one that never does
    (then only failed writes mark it degraded).
    """

    def __init__(self, settings: BreakerRegistrySettings, subscribed: bool = False) -> None:
        self.settings = settings
        self._sub_ok = subscribed
        self._flush_ok = True
        self._logged = False
        self._local: dict[str, deque[tuple[float, str]]] = {}
        self._local_open: dict[str, float] = {}  # key -> monotonic end of a local open

    @property
    def degraded(self) -> bool:
        """True while Redis is away (the view is failing static)."""
        return not (self._sub_ok and self._flush_ok)

    @property
    def writable(self) -> bool:
        """False since a write to Redis failed, until one succeeds."""
        return self._flush_ok

    def set_subscribed(self, ok: bool, exc: BaseException | None = None) -> None:
        """The subscription is up (``ok``) or lost (``exc`` says why)."""
        was = self.degraded
        self._sub_ok = ok
        self._note(was, exc)

    def set_writable(self, ok: bool, exc: BaseException | None = None) -> None:
        """A write to Redis succeeded (``ok``) or failed (``exc`` says why)."""
        was = self.degraded
        self._flush_ok = ok
        self._note(was, exc)

    def blocks(self, key: str) -> bool:
        """True while ``key`` is open for this process alone; drops expired local opens."""
        if not self._local_open:
            return False
        until = self._local_open.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        self._local_open.pop(key, None)
        return False

    def locally_open(self) -> list[str]:
        """Keys this process opened on its own while Redis was away."""
        return [k for k in list(self._local_open) if self.blocks(k)]

    def count(self, key: str, code: str) -> None:
        """One result (``s``/``f``, upper case when slow), counted in memory; opens ``key``
        for this process when its policy's thresholds are reached."""
        policy = self.settings.policy_for(key)
        calls = self._local.get(key)
        if calls is None:
            size = policy.window_size if policy.window == "count" else _TIME_WINDOW_CALLS
            calls = self._local[key] = deque(maxlen=size)
        now = time.monotonic()
        calls.append((now, code))
        if policy.window == "time":
            while calls and calls[0][0] < now - policy.window_size:
                calls.popleft()
        n = len(calls)
        if n < policy.minimum_calls:
            return
        fails = sum(1 for _, c in calls if c in "fF")
        slows = sum(1 for _, c in calls if c in "SF")
        failing = fails / n >= policy.failure_rate_threshold
        if failing or slows / n >= policy.slow_call_rate_threshold:
            if not self.blocks(key):
                log.warning(
                    "breaker %s opened locally (redis away): %d of %d calls failed", key, fails, n
                )
            self._local_open[key] = now + policy.wait_in_open
            calls.clear()

    def _note(self, was: bool, exc: BaseException | None) -> None:
        now = self.degraded
        if now and not was and not self._logged:
            self._logged = True
            log.warning(
                "breakers: redis unreachable (%s); keeping the last known states and counting "
                "locally until it is back",
                exc,
            )
        elif was and not now:
            self._local.clear()
            self._local_open.clear()
            if self._logged:
                self._logged = False
                log.warning("breakers: redis reachable again; view re-read")

"""The gateway's face of the breakers: a store, a local view, its subscription and the writer.

An in-process breaker learns about a failing replica only by failing into it, once per process.
Here every breaker (one per revision, node or replica) lives in Redis and every change of state
is an atomic script (:mod:`knative.breakers._store`); each process keeps a local view fed by a
subscription (:mod:`knative.breakers._subscription`), so asking "may I call this target?" reads
memory only, and results are written in batches by a background thread
(:mod:`knative.breakers._writer`). While Redis is away the process fails static
(:mod:`knative.breakers._failstatic`) and recovers by itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from knative.breakers._failstatic import FailStatic
from knative.breakers._settings import BreakerRegistrySettings
from knative.breakers._states import (
    CLOSED,
    DISABLED,
    FORCED_CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerError,
    BreakerStatus,
    Permit,
    Transition,
    TransitionHook,
)
from knative.breakers._store import BreakerStore, subscription_client
from knative.breakers._subscription import Subscription
from knative.breakers._view import Entry, LocalView
from knative.breakers._writer import BatchWriter

log = logging.getLogger(__name__)

_UNCOUNTED = (FORCED_CLOSED, DISABLED)
_TICK_RETRY = 0.05  # seconds before a tick Redis found early is tried again


class BreakerRegistry:
    """The local view of every breaker, kept current by a subscription, and the batching writer.

    Request path (memory only, no Redis round trip except to take a half-open probe):
    :meth:`acquire` -> call the target -> :meth:`record`. :meth:`allows` answers without taking
    anything (to filter candidates). ``health`` says whether Redis is reachable and holds what
    this process counts on its own while it is not.

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
        # Without threads there is no subscription to lose; failed writes still mark degraded.
        self.health = FailStatic(settings, subscribed=not start)
        self._view = LocalView(lambda: self.store.clock_offset_ms)
        self._stop = threading.Event()
        self._writer = BatchWriter(self.store, settings, self.health, self._view.apply, self._stop)
        self._pubsub_client = subscription_client(settings.redis_url, settings.redis_timeout)
        self._subscription = Subscription(
            self._pubsub_client,
            self.store.channel,
            settings,
            lambda wholesale: self.refresh(wholesale=wholesale),
            self._view.apply_message,
            self.health,
            self._stop,
        )
        self._slow: dict[str, float] = {}
        self._next_tick: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> BreakerRegistry:
        if self._threads:
            return self
        loops: tuple[tuple[str, Callable[[], None]], ...] = (
            ("subscriber", self._subscription.run),
            ("writer", lambda: self._writer.run(self.tick)),
        )
        for name, target in loops:
            t = threading.Thread(target=target, name=f"breaker-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the first full read of Redis landed (or ``timeout``)."""
        return self._view.wait_ready(timeout)

    def close(self) -> None:
        self._stop.set()
        self._writer.wake()
        self._subscription.interrupt()
        for t in self._threads:
            t.join(2.0)
        self._threads = []
        with contextlib.suppress(BreakerError):  # Redis away: the queued results are lost
            self.flush()
        self.store.client.close()
        self._pubsub_client.close()

    def __enter__(self) -> BreakerRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def degraded(self) -> bool:
        """True while Redis is away (the view is failing static)."""
        return self.health.degraded

    @property
    def view_age(self) -> float:
        """Seconds since the view was last confirmed against Redis."""
        return self._view.age

    # --- request path -----------------------------------------------------------------------

    def allows(self, key: str) -> bool:
        """Would :meth:`acquire` let a call through (without taking a half-open probe)?"""
        if self.health.blocks(key):
            return False
        e = self._view.get(key)
        if e is None:
            return True
        st = e.state
        if st in (CLOSED, FORCED_CLOSED, DISABLED):
            return True
        if st == HALF_OPEN:
            return e.probes != 0
        if st == OPEN:
            return self._wait_over_while_degraded(e)
        return False

    def acquire(self, key: str) -> Permit | None:
        """Leave to call the target behind ``key`` now, or ``None``."""
        if self.health.blocks(key):
            return None
        e = self._view.get(key)
        if e is None:
            return Permit(key, 0, True)
        st = e.state
        if st == CLOSED:
            return Permit(key, e.gen, True)
        if st in _UNCOUNTED:
            return Permit(key, e.gen, False)
        if st == HALF_OPEN:
            return self._probe(key, e)
        if st == OPEN and self._wait_over_while_degraded(e):
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
        self._writer.add(key, permit.generation, code, urgent=not ok or code == "S")
        if self.health.degraded:
            self.health.count(key, code)

    def state(self, key: str) -> str:
        return self._view.state(key)

    def generation(self, key: str) -> int:
        return self._view.generation(key)

    def view(self) -> dict[str, BreakerStatus]:
        """A copy of the local view."""
        return self._view.statuses()

    def locally_open(self) -> list[str]:
        """Keys this process opened on its own while Redis was away."""
        return self.health.locally_open()

    def _wait_over_while_degraded(self, e: Entry) -> bool:
        return self.health.degraded and self._view.now() >= (e.until or 0)

    def _probe(self, key: str, e: Entry) -> Permit | None:
        if e.probes == 0:
            return None
        if self.health.degraded:
            if e.probes < 0:
                e.probes = self.settings.policy_for(key).permitted_calls_in_half_open
            e.probes -= 1
            return Permit(key, e.gen, True)
        try:
            gen, t = self.store.acquire(key)
        except BreakerError as exc:
            self.health.set_writable(False, exc)
            return None
        if t is not None:
            self._view.apply(t)
        if gen is None:
            self._view.probes_exhausted(key, e.gen)
            return None
        return Permit(key, gen, True)

    # --- operators and functions --------------------------------------------------------------

    def act(self, key: str, action: str, reason: str = "") -> Transition | None:
        t = self.store.act(key, action, reason)
        if t is not None:
            self._view.apply(t)
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
        return self._writer.flush()

    def tick(self) -> list[Transition]:
        """Run the time-driven moves that are due by this process's estimate of Redis time."""
        now = self._view.now()
        mono = time.monotonic()
        made = []
        for key, e in self._view.items():
            due = self._due(key, e)
            if due is None or now < due or mono < self._next_tick.get(key, 0.0):
                continue
            t = self.store.tick(key)
            if t is not None:
                self._view.apply(t)
                made.append(t)
                self._next_tick.pop(key, None)
            else:  # our clock ran ahead of Redis's: look again shortly
                self._next_tick[key] = mono + _TICK_RETRY
        return made

    def _due(self, key: str, e: Entry) -> float | None:
        """Redis time at which ``key`` has a time-driven move to make, if any."""
        if e.state == OPEN and e.until is not None:
            return e.until
        if e.state == HALF_OPEN and e.since is not None:
            hp_max = self.settings.policy_for(key).max_wait_in_half_open
            if hp_max > 0:
                return e.since + hp_max
        return None

    def refresh(self, wholesale: bool = False) -> None:
        """Re-read every breaker from Redis into the view. ``wholesale`` forgets entries Redis
        no longer has (after a reconnect: the server may have restarted empty)."""
        started = time.monotonic()
        t0 = time.time()
        rows, redis_now = self.store.statuses()
        t1 = time.time()
        self._view.replace(rows, redis_now - (t0 + t1) / 2, started, wholesale)

"""The batching writer: call results reach Redis off the request path, in batches.

A request must not pay a Redis round trip to report its result. Results are queued in memory
(bounded: while Redis is away the oldest are dropped first) and a background thread writes them
every ``flush_interval``, or at once when a failure or a slow call wakes it, one ``record``
script per breaker and generation, pipelined into one round trip. After each write it runs the
time-driven moves that are due. A failed write leaves the results queued, marks the process
degraded and is retried every ``reconnect_interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from knative.breakers._failstatic import FailStatic
from knative.breakers._settings import BreakerRegistrySettings
from knative.breakers._states import BreakerError, BreakerUnavailable, Transition
from knative.breakers._store import BreakerStore

log = logging.getLogger(__name__)

Result = tuple[str, int, str]  # (key, generation, outcome code)


class BatchWriter:
    """Queued results and the thread that writes them.

    ``apply`` takes every transition a write made (into the local view); ``stop`` ends
    :meth:`run`.
    """

    def __init__(
        self,
        store: BreakerStore,
        settings: BreakerRegistrySettings,
        health: FailStatic,
        apply: Callable[[Transition], None],
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.settings = settings
        self._health = health
        self._apply = apply
        self._stop = stop
        self._pending: deque[Result] = deque(maxlen=settings.max_pending)
        self._wake = threading.Event()

    def add(self, key: str, generation: int, code: str, urgent: bool = False) -> None:
        """Queue one result; ``urgent`` wakes the writer now instead of at the next interval."""
        self._pending.append((key, generation, code))
        if urgent:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def flush(self) -> list[Transition]:
        """Write the queued results now. Raises :class:`BreakerUnavailable` if Redis is away
        (the results stay queued)."""
        taken = self._take()
        if not taken:
            return []
        try:
            results = self.store.record_many(self._batch(taken))
        except BreakerUnavailable:
            # Put them back (oldest first) for the next try; the deque's bound drops the oldest.
            self._pending.extendleft(reversed(taken))
            raise
        made = []
        for _key, _applied, t in results:
            if t is not None:
                self._apply(t)
                made.append(t)
        return made

    def _take(self) -> list[Result]:
        taken: list[Result] = []
        while True:
            try:
                taken.append(self._pending.popleft())
            except IndexError:
                return taken

    def _batch(self, taken: list[Result]) -> dict[tuple[str, int], str]:
        """The results as one outcome string per breaker and generation, oldest first."""
        grouped: dict[tuple[str, int], list[str]] = {}
        for key, gen, code in taken:
            grouped.setdefault((key, gen), []).append(code)
        joined = {}
        for (key, gen), codes in grouped.items():
            policy = self.settings.policy_for(key)
            kept = codes
            if policy.window == "count" and len(codes) > policy.window_size:
                kept = codes[-policy.window_size :]  # older ones would leave the ring at once
            joined[(key, gen)] = "".join(kept)
        return joined

    def run(self, tick: Callable[[], object]) -> None:
        """The thread's body: flush, then ``tick`` (the time-driven moves), until stopped."""
        retry_at = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.settings.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if not self._health.writable and now < retry_at:
                continue
            try:
                if not self._health.writable:
                    self.store.time()  # is it back? (flush and tick may not touch Redis)
                    self._health.set_writable(True)
                self.flush()
                tick()
            except BreakerError as exc:
                self._health.set_writable(False, exc)
                retry_at = now + self.settings.reconnect_interval
            except Exception:  # never let the writer die
                log.exception("breaker writer failed")
                retry_at = now + self.settings.reconnect_interval

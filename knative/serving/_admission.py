"""Admission of requests to one replica: a bounded count of requests in flight.

A replica takes at most ``capacity`` requests at once (running on the engine plus waiting for
it) and refuses the rest at once, so a router retries elsewhere instead of threads piling up
here. Each admitted request holds a :class:`Ticket` until its answer (or its stream) ends; the
drain waits on the count reaching zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Publish = Callable[[int, int], None]  # (in flight, running) after every change


def _ignore(inflight: int, running: int) -> None:
    return None


class Admission:
    """Counts admitted requests and those of them the engine runs; thread-safe."""

    def __init__(self, capacity: int, publish: Publish = _ignore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._publish = publish
        self._clock = clock
        self._inflight = 0
        self._running = 0
        self._cond = threading.Condition()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def running(self) -> int:
        return self._running

    def try_admit(self) -> Ticket | None:
        """A ticket for one more request, or None when ``capacity`` are in flight."""
        with self._cond:
            if self._inflight >= self.capacity:
                return None
            self._inflight += 1
            self._changed()
        return Ticket(self)

    def started(self) -> None:
        """An admitted request began to run on the engine (once per ticket)."""
        with self._cond:
            self._running += 1
            self._changed()

    def released(self, was_running: bool) -> None:
        """An admitted request ended (once per ticket)."""
        with self._cond:
            if was_running:
                self._running -= 1
            self._inflight -= 1
            self._changed()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no request in flight; True when none is."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._inflight > 0:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _changed(self) -> None:
        self._publish(self._inflight, self._running)


class Ticket:
    """One admitted request: ``start`` when the engine takes it, ``release`` when it ends.

    Both are idempotent, and a released ticket never starts: a stream's generator and its
    response's close hook may both release it.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._lock = threading.Lock()
        self._running = False
        self._done = False

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        with self._lock:
            if not self._running and not self._done:
                self._running = True
                self._admission.started()

    def release(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._admission.released(self._running)

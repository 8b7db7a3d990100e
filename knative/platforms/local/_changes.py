"""A generation counter of what the gateways route by on the local platform.

A gateway that polls the replica table learns of a lost replica's replacement up to one poll
interval late. The local platform instead counts each change of its routing state (the
replicas, their phase and readiness, the traffic split) and lets a caller wait for the next
one: the control API's ``GET /v1/changes`` long-poll, which a gateway's resolver waits on
before it re-reads the table.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Changes:
    """The generation of a state that callers observe; :meth:`wait` returns when it moves."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 1
        self._state: Hashable = None

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def observe(self, state: Hashable) -> int:
        """Record ``state``; a new generation (and every waiter woken) when it differs from
        the last one observed."""
        with self._cond:
            if state != self._state:
                self._state = state
                self._generation += 1
                self._cond.notify_all()
            return self._generation

    def wait(self, after: int, timeout: float) -> int:
        """The generation once it is not ``after`` (at once when it already is not: a caller
        that saw an older platform, or none yet), or the same one after ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != after, timeout)
            return self._generation

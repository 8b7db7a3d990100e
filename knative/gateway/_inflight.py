"""What one gateway process has in progress, counted in one place.

Four counts steer the request path: the requests in progress (the retry budget is a share of
them), the requests among them that are retrying (what the budget allows), the requests
waiting for a ready replica (the wait queue's bound), and the tries in progress on each
replica (a request goes to the least busy one, the least recently tried among equals). A
request ends either when the gateway answers it or, for a stream, when the stream ends; both
call this object, and a request that is ended twice is counted once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Ticket:
    """One request's entry in the counts (taken by :meth:`InFlight.begin`)."""

    __slots__ = ("ended", "retrying")

    def __init__(self) -> None:
        self.ended = False
        self.retrying = False


class InFlight:
    """Requests, retries and per-replica tries in progress, and the retry budget over them:
    at most ``max(budget_min, budget_ratio * active)`` requests retry at once."""

    def __init__(self, budget_ratio: float, budget_min: int) -> None:
        self.budget_ratio = budget_ratio
        self.budget_min = budget_min
        self.active = 0
        self.retrying = 0
        self.waiting = 0
        self._lock = threading.Lock()
        self._tries: dict[str, int] = {}
        self._starts = 0
        self._last: dict[str, int] = {}  # replica -> the number of the last try started on it

    def begin(self) -> Ticket:
        """A request starts."""
        with self._lock:
            self.active += 1
        return Ticket()

    def end(self, ticket: Ticket) -> None:
        """A request ends (again: nothing)."""
        with self._lock:
            if ticket.ended:
                return
            ticket.ended = True
            self.active -= 1
            if ticket.retrying:
                self.retrying -= 1

    def may_retry(self, ticket: Ticket) -> bool:
        """Whether this request may try again: it already retries, or the budget has room
        (then it counts as retrying until it ends)."""
        with self._lock:
            if ticket.retrying:
                return True
            if self.retrying < max(self.budget_min, self.budget_ratio * self.active):
                self.retrying += 1
                ticket.retrying = True
                return True
        return False

    def wait_begin(self, limit: int) -> bool:
        """A request starts waiting for a ready replica, unless ``limit`` already wait."""
        with self._lock:
            if self.waiting >= limit:
                return False
            self.waiting += 1
            return True

    def wait_end(self) -> None:
        with self._lock:
            self.waiting -= 1

    def try_started(self, url: str) -> None:
        with self._lock:
            self._tries[url] = self._tries.get(url, 0) + 1
            self._starts += 1
            self._last[url] = self._starts

    def claim(self, urls: list[str], choose: Callable[[list[str]], str]) -> str:
        """Count a try on the least busy of ``urls`` (the fewest tries in progress, then the
        least recently tried; ``choose`` draws among equals) and return it. Picking and
        counting at once spreads tries that pick at the same moment (the streams of a replica
        that died all resume together)."""
        with self._lock:
            rank = {u: (self._tries.get(u, 0), self._last.get(u, 0)) for u in urls}
            best = min(rank.values())
            url = choose([u for u in urls if rank[u] == best])
            self._tries[url] = self._tries.get(url, 0) + 1
            self._starts += 1
            self._last[url] = self._starts
            return url

    def try_ended(self, url: str) -> None:
        with self._lock:
            self._tries[url] -= 1

    def tries(self, url: str) -> int:
        """Tries in progress on the replica at ``url`` (a read without the lock: a hint)."""
        return self._tries.get(url, 0)


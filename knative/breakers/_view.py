"""A process's local view of every breaker: what the request path reads instead of Redis.

Asking "may I call this target?" must cost memory only. The view holds the last known state of
each breaker, fed by the transitions this process made, by the messages of the subscription and
by full re-reads; an entry is replaced whole on every change, so a reader never sees a
half-updated one, and an older generation never overwrites a newer one. The view also keeps
this process's estimate of Redis time (the scripts' clock), so time-driven moves can be judged
without asking Redis.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from knative.breakers._states import CLOSED, BreakerStatus, Transition, seconds_of_ms

log = logging.getLogger(__name__)


class Entry:
    """One breaker in the local view. Replaced whole on every change of state."""

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


def parse_message(data: bytes) -> Transition:
    """A transition as the scripts publish it; ``ValueError``/``KeyError``/``TypeError`` when
    the message is not one."""
    m = json.loads(data)
    return Transition(
        key=str(m["key"]),
        old=str(m["old"]),
        new=str(m["new"]),
        generation=int(m["gen"]),
        at=int(m["at"]) / 1000.0,
        until=seconds_of_ms(m.get("until")),
        reason=str(m.get("reason", "")),
        opens=int(m.get("opens", 0)),
    )


class LocalView:
    """The last known state of every breaker, and this process's estimate of Redis time.

    ``clock_offset_ms`` returns the test offset the store adds to Redis ``TIME`` (0 outside
    tests), so the estimate follows the scripts' clock.
    """

    def __init__(self, clock_offset_ms: Callable[[], int]) -> None:
        self._entries: dict[str, Entry] = {}
        self._clock_offset_ms = clock_offset_ms
        self._skew = 0.0  # Redis time minus local time.time(), seconds
        self._lock = threading.Lock()  # serialises view replacement against applies
        self._last_refresh = 0.0
        self._refreshed = threading.Event()

    # --- reads (memory only) ----------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def state(self, key: str) -> str:
        e = self._entries.get(key)
        return e.state if e else CLOSED

    def generation(self, key: str) -> int:
        e = self._entries.get(key)
        return e.gen if e else 0

    def items(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def statuses(self) -> dict[str, BreakerStatus]:
        """A copy of the view."""
        return {k: e.status(k) for k, e in list(self._entries.items())}

    def now(self) -> float:
        """This process's estimate of Redis time (with the test offset), seconds."""
        return time.time() + self._skew + self._clock_offset_ms() / 1000.0

    @property
    def age(self) -> float:
        """Seconds since the view was last confirmed against Redis."""
        return time.monotonic() - self._last_refresh if self._last_refresh else math.inf

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first full read landed (or ``timeout``)."""
        return self._refreshed.wait(timeout)

    # --- changes ----------------------------------------------------------------------------

    def apply(self, t: Transition) -> None:
        """Take a transition, unless the view already knows a newer generation."""
        with self._lock:
            cur = self._entries.get(t.key)
            if cur is not None and cur.gen > t.generation:
                return
            self._entries[t.key] = Entry(
                BreakerStatus(t.key, t.new, t.generation, t.at, t.until, t.opens, t.reason)
            )

    def apply_message(self, data: bytes) -> None:
        """Take a transition published by any process; a malformed message is logged."""
        try:
            t = parse_message(data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed breaker message: %.200r", data)
            return
        self.apply(t)

    def probes_exhausted(self, key: str, generation: int) -> None:
        """Redis refused a half-open probe: none left in ``generation`` (no more round trips)."""
        cur = self._entries.get(key)
        if cur is not None and cur.gen == generation:
            cur.probes = 0

    def replace(
        self,
        rows: Iterable[BreakerStatus],
        skew: float,
        started: float,
        wholesale: bool = False,
    ) -> None:
        """Install a full read of Redis begun at ``started`` (monotonic), with Redis time minus
        local time ``skew``. Entries changed since ``started`` are kept where they are newer;
        ``wholesale`` forgets entries Redis no longer has (it may have restarted empty)."""
        self._skew = skew
        with self._lock:
            new: dict[str, Entry] = {}
            for st in rows:
                new[st.key] = self._merged(st, started, wholesale)
            if not wholesale:
                for k, cur in self._entries.items():
                    if k not in new and cur.updated > started:
                        new[k] = cur
            self._entries = new
        self._last_refresh = time.monotonic()
        self._refreshed.set()

    def _merged(self, st: BreakerStatus, started: float, wholesale: bool) -> Entry:
        cur = self._entries.get(st.key)
        if cur is None:
            return Entry(st)
        if not wholesale and cur.gen > st.generation and cur.updated > started:
            return cur  # a newer transition landed while we were reading
        if cur.gen == st.generation and cur.state == st.state:
            return cur  # unchanged: keep its probe bookkeeping
        return Entry(st)

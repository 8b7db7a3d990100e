"""Where one request may go next: the revisions in order, and a replica of one of them.

Faults pile up: the traffic may stand on a revision that has just lost its last replica while
another, at 0% or the fallback, still has ready ones; every breaker may be open because the
gateway's own tries failed while replicas died. So no revision is final: the request asks the
one the traffic split draws, then the other routes by their percents, then the fallback, then
the service's 0% targets (a fallback that fails falls over to the primary as the primary falls
over to the fallback). Each revision is asked in two passes: first what the breakers allow,
then, when nothing they allow answered, the last resort: the ready replicas behind breakers
that are not forced open (:meth:`BreakerGuard.last_resort`).
"""

from __future__ import annotations

import random

from knative.breakers import Permit, revision_key
from knative.gateway._guard import BreakerGuard
from knative.gateway._inflight import InFlight
from knative.gateway._routing import Endpoint, Route, RoutingTable


class Planner:
    """The order of revisions and the choice of replicas for the gateway's request path;
    ``rng`` draws the weighted split and the two choices."""

    def __init__(self, guard: BreakerGuard, inflight: InFlight, rng: random.Random) -> None:
        self.guard = guard
        self.inflight = inflight
        self.rng = rng

    def order(self, table: RoutingTable) -> tuple[list[Route], Route | None]:
        """Every revision of ``table`` once, in the order to ask them, and the one the traffic
        split drew (None when no route with a share of traffic can take it)."""
        usable = self.guard.usable
        split = [r for r in table.routes if r.percent > 0 and usable(r)]
        first = self.draw(split)
        fb = table.fallback
        taking = sorted((r for r in table.routes if r is not first), key=lambda r: -r.percent)
        ordered = [*([first] if first else []), *taking, *([fb] if fb else []), *table.standby]
        seen: set[str] = set()
        out = []
        for r in ordered:
            if r.revision not in seen:
                seen.add(r.revision)
                out.append(r)
        return out, first

    def draw(self, routes: list[Route]) -> Route | None:
        """One of ``routes`` by their percents."""
        if not routes:
            return None
        if len(routes) == 1:
            return routes[0]
        total = sum(r.percent for r in routes)
        x = self.rng.random() * total
        for r in routes:
            x -= r.percent
            if x < 0:
                return r
        return routes[-1]

    def admits(self, route: Route, last: bool) -> bool:
        """Whether pass ``last`` may ask ``route`` at all (it has a ready replica, and its
        breaker allows it, or, in the last resort, is not forced open)."""
        if not any(e.ready for e in route.endpoints):
            return False
        if last:
            return not self.guard.forced_open(revision_key(route.revision))
        return self.guard.usable(route)

    def candidates(self, route: Route, tried: set[str], last: bool) -> list[Endpoint]:
        """The ready replicas of ``route`` not tried yet that pass ``last`` may try; the last
        resort keeps those whose own breakers allow them, when there are any."""
        guard = self.guard
        ready = [e for e in route.endpoints if e.ready and e.url not in tried]
        allowed = [e for e in ready if guard.allows_endpoint(e)]
        if allowed or not last:
            return allowed
        return [e for e in ready if guard.last_resort(route, e)]

    def pick(self, route: Route, tried: set[str], last: bool,
             at_most: int | None = None) -> tuple[Endpoint, list[Permit]] | None:
        """The replica with the fewest tries in progress, among equals the one whose last try
        started longest ago (at random among those never tried), its try counted in progress
        at once (the caller tries it and ends the count), with its try's permits (none
        in the last resort behind a breaker that refused: that try is not counted). A revision
        has a handful of replicas, so every one is compared: idle replicas take requests in
        turn, and a replacement, never tried, takes the next one (power of two choices would
        leave it out of the draw a third of the time among three). With ``at_most``, only a
        replica with at most that many tries in progress."""
        guard = self.guard
        skip: set[str] = set()
        while True:
            cands = [e for e in self.candidates(route, tried, last) if e.url not in skip
                     and (at_most is None or self.inflight.tries(e.url) <= at_most)]
            if not cands:
                return None
            by_url = {e.url: e for e in cands}
            ep = by_url[self.inflight.claim(list(by_url), self.rng.choice)]  # counted now
            permits = guard.acquire_endpoint(ep) if guard.allows_endpoint(ep) else None
            if permits is not None:
                return ep, permits
            if last:
                return ep, []
            self.inflight.try_ended(ep.url)  # not tried after all
            skip.add(ep.url)  # a half-open breaker with no probe left: skip this one

    def capacity(self, table: RoutingTable, tried: set[str]) -> tuple[int, list[str]]:
        """Ready replicas not in ``tried`` that some pass may try, and the forced-open breakers
        in front of the ready ones no pass may try."""
        n = 0
        forced: list[str] = []
        for route in table.revisions():
            for e in route.endpoints:
                if not e.ready or e.url in tried:
                    continue
                keys = self.guard.forced_keys(route, e)
                if keys:
                    forced += [k for k in keys if k not in forced]
                else:
                    n += 1
        return n, forced

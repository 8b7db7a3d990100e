"""The breakers as the gateway's request path uses them.

Which breakers one try consults (the replica's, and its node's), whether a revision may take
traffic, the revision's permit taken once per request and settled once, and the results of
each try. Without a breaker registry everything is allowed and nothing is recorded.

A breaker orders the gateway's choices; only an operator's ``forced_open`` forbids one. A
breaker opened by a failure rate (the gateway's own results) or an open one still waiting in
half-open refuses in the first pass; when nothing it allows can answer, the last resort tries
the ready replicas behind such breakers (:meth:`BreakerGuard.last_resort`), uncounted, rather
than answer 503 while a replica is ready.
"""

from __future__ import annotations

import time

from knative.breakers import BreakerRegistry, Permit, node_key, replica_key, revision_key
from knative.gateway._exchange import ProxyRequest
from knative.gateway._routing import Endpoint, Route

_FORCED_OPEN = "forced_open"


class BreakerGuard:
    """The request path's view of a :class:`BreakerRegistry` (or of none)."""

    def __init__(self, breakers: BreakerRegistry | None) -> None:
        self.breakers = breakers
        self._keys: dict[tuple[str, str | None], tuple[str, ...]] = {}

    def allows(self, key: str) -> bool:
        b = self.breakers
        return b is None or b.allows(key)

    def forced_open(self, key: str) -> bool:
        """An operator forced this breaker open: no try goes behind it, not even the last
        resort's."""
        b = self.breakers
        return b is not None and b.state(key) == _FORCED_OPEN

    def forced_keys(self, route: Route, ep: Endpoint | None = None) -> list[str]:
        """The forced-open breakers in front of ``route`` (and of ``ep``)."""
        keys = [revision_key(route.revision), *(self.endpoint_keys(ep) if ep else ())]
        return [k for k in keys if self.forced_open(k)]

    def last_resort(self, route: Route, ep: Endpoint) -> bool:
        """Whether the last resort may try ``ep``: no forced-open breaker in front of it."""
        return not self.forced_keys(route, ep)

    def endpoint_keys(self, ep: Endpoint) -> tuple[str, ...]:
        """The breakers of one try: the node's and the replica's."""
        k = (ep.replica, ep.node)
        keys = self._keys.get(k)
        if keys is None:
            keys = (node_key(ep.node), replica_key(ep.replica)) if ep.node else (
                replica_key(ep.replica),)
            self._keys[k] = keys
        return keys

    def allows_endpoint(self, ep: Endpoint) -> bool:
        b = self.breakers
        return b is None or all(b.allows(k) for k in self.endpoint_keys(ep))

    def usable(self, route: Route) -> bool:
        """The revision's breaker allows it and it has a ready replica."""
        if not self.allows(revision_key(route.revision)):
            return False
        return any(e.ready for e in route.endpoints)

    def acquire_endpoint(self, ep: Endpoint) -> list[Permit] | None:
        """Permits for one try on ``ep``; None when a half-open breaker has no probe left."""
        b = self.breakers
        if b is None:
            return []
        permits = []
        for k in self.endpoint_keys(ep):
            p = b.acquire(k)
            if p is None:
                return None
            permits.append(p)
        return permits

    def enter(self, route: Route, req: ProxyRequest) -> bool:
        """Take the revision's permit (a probe if it is half-open)."""
        b = self.breakers
        if b is None:
            return True
        p = b.acquire(revision_key(route.revision))
        if p is None:
            return False
        req.rev_permit = p
        req.rev_t0 = time.monotonic()
        return True

    def settle(self, req: ProxyRequest, ok: bool | None, seconds: float | None = None) -> None:
        """Record the request's result on the revision it ended on (``None``: nothing tried)."""
        p = req.rev_permit
        if p is None:
            return
        req.rev_permit = None
        if ok is not None and self.breakers is not None:
            self.breakers.record(
                p, ok, seconds if seconds is not None else time.monotonic() - req.rev_t0)

    def record(self, permits: list[Permit], ok: bool, seconds: float) -> None:
        """One try's result on its node and replica breakers."""
        b = self.breakers
        if b is not None:
            for p in permits:
                b.record(p, ok, seconds)

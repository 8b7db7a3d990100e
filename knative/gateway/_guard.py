"""The breakers as the gateway's request path uses them.

Which breakers one try consults (the replica's, and its node's), whether a revision may take
traffic, the revision's permit taken once per request and settled once, and the results of
each try. Without a breaker registry everything is allowed and nothing is recorded.
"""

from __future__ import annotations

import time

from knative.breakers import BreakerRegistry, Permit, node_key, replica_key, revision_key
from knative.gateway._exchange import ProxyRequest
from knative.gateway._routing import Endpoint, Route


class BreakerGuard:
    """The request path's view of a :class:`BreakerRegistry` (or of none)."""

    def __init__(self, breakers: BreakerRegistry | None) -> None:
        self.breakers = breakers
        self._keys: dict[tuple[str, str | None], tuple[str, ...]] = {}

    def allows(self, key: str) -> bool:
        b = self.breakers
        return b is None or b.allows(key)

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

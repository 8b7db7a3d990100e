"""Where the gateway may send a request: revisions, their weights and their replicas.

The gateway asks a :class:`Resolver` for a :class:`RoutingTable` on every request, so a
resolver answers from memory: :class:`StaticResolver` holds a table given on the command line;
:class:`PlatformResolver` rebuilds the table from the platform seam (``replicas`` and
``traffic`` of a service) on a background thread and keeps the last good table when the
platform does not answer. A platform that can say when its routing state changes (the local
platform's ``wait_change``, a long-poll on its control API) wakes that thread at once, so a
replacement replica is routed to as soon as it is ready; the poll stays as the fallback.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

from knative.platforms import NotFound, Platform, PlatformError

log = logging.getLogger(__name__)


class RoutingSpecError(ValueError):
    """A target or fallback given on the command line or in settings cannot be parsed."""


@dataclass(frozen=True)
class Endpoint:
    """One replica of a revision, as the gateway calls it."""

    url: str  # http://host:port, no path
    replica: str
    node: str | None = None
    ready: bool = True
    host: str = field(init=False, compare=False, repr=False)
    port: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        object.__setattr__(self, "host", parts.hostname or "127.0.0.1")
        object.__setattr__(self, "port", parts.port or 80)


@dataclass(frozen=True)
class Route:
    """A revision with its share of traffic (percent) and its replicas."""

    revision: str
    percent: int
    endpoints: tuple[Endpoint, ...] = ()

    def ready(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.ready]


@dataclass(frozen=True)
class RoutingTable:
    """The revisions a request may go to: ``routes`` split the traffic by their percents,
    ``standby`` are the service's targets at 0% (used when no route can answer), and
    ``fallback`` is the warm fallback revision (which may also be one of the routes)."""

    routes: tuple[Route, ...] = ()
    fallback: Route | None = None
    standby: tuple[Route, ...] = ()

    def revisions(self) -> list[Route]:
        """Every revision once: the routes, then the standby targets, then the fallback."""
        seen: set[str] = set()
        out = []
        for r in (*self.routes, *self.standby, *([self.fallback] if self.fallback else [])):
            if r.revision not in seen:
                seen.add(r.revision)
                out.append(r)
        return out

    def ready_endpoints(self) -> int:
        """Ready replicas of every revision the gateway may send to."""
        return sum(len(r.ready()) for r in self.revisions())


@runtime_checkable
class ChangeWatch(Protocol):
    """A platform that tells when its routing state changed: ``wait_change(after, timeout)``
    returns the current generation once it is not ``after``, or after ``timeout`` s."""

    def wait_change(self, after: int, timeout: float) -> int: ...


@runtime_checkable
class Resolver(Protocol):
    """Gives the gateway its current routing table. ``table()`` must not block."""

    def table(self) -> RoutingTable: ...

    def close(self) -> None: ...


class StaticResolver:
    """A fixed table (from flags or settings); :meth:`set` replaces it (tests, reloads)."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def table(self) -> RoutingTable:
        return self._table

    def set(self, table: RoutingTable) -> None:
        self._table = table

    def close(self) -> None:
        pass


class PlatformResolver:
    """The table of a service as the platform reports it, refreshed every ``interval`` s, and
    at once when a platform with ``wait_change`` (:class:`ChangeWatch`) says it changed.

    Routes come from ``platform.traffic(service)`` (entries with percent > 0; those at 0% are
    the table's ``standby``) and their endpoints from ``platform.replicas(service)`` (a
    replica is usable when it is ready, Running, and has a URL). The fallback is the revision
    named ``fallback_revision``, else the traffic entry tagged ``fallback``. When the platform
    fails, the last table stays (logged once until it answers again).
    """

    def __init__(
        self,
        platform: Platform,
        service: str,
        fallback_revision: str | None = None,
        interval: float = 1.0,
        start: bool = True,
    ) -> None:
        self.platform = platform
        self.service = service
        self.fallback_revision = fallback_revision
        self.interval = interval
        self._table = RoutingTable()
        # looked up on the class: a platform's own __getattr__ is not asked
        watches = callable(getattr(type(platform), "wait_change", None))
        self._watch = cast(ChangeWatch, platform) if watches else None
        self._generation = 0  # the platform's routing generation the table was read at
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshed_at = 0.0
        if start:
            try:
                self.refresh()
            except PlatformError as exc:
                self._note_failure(exc)
            self._thread = threading.Thread(target=self._loop, name="resolver", daemon=True)
            self._thread.start()

    def table(self) -> RoutingTable:
        return self._table

    def refresh(self) -> RoutingTable:
        replicas = self.platform.replicas(self.service)
        traffic = self.platform.traffic(self.service)
        by_rev: dict[str, list[Endpoint]] = {}
        for r in replicas:
            if not r.url:
                continue
            by_rev.setdefault(r.revision, []).append(
                Endpoint(
                    url=r.url.rstrip("/"),
                    replica=r.name,
                    node=r.node,
                    ready=bool(r.ready and r.phase == "Running"),
                )
            )
        routes = tuple(
            Route(t.revision, t.percent, tuple(by_rev.get(t.revision, ())))
            for t in traffic
            if t.percent > 0
        )
        fb_rev = self.fallback_revision
        if fb_rev is None:
            fb_rev = next((t.revision for t in traffic if t.tag == "fallback"), None)
        fallback = Route(fb_rev, 0, tuple(by_rev.get(fb_rev, ()))) if fb_rev else None
        taking = {r.revision for r in routes}
        standby = tuple(
            Route(t.revision, 0, tuple(by_rev.get(t.revision, ())))
            for t in traffic
            if t.percent <= 0 and t.revision != fb_rev and t.revision not in taking
        )
        self._table = RoutingTable(routes, fallback, standby)
        self.refreshed_at = time.monotonic()
        if self._failing:
            self._failing = False
            log.warning("resolver: platform answers again for service %s", self.service)
        return self._table

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "resolver: platform failed for service %s (%s); keeping the last table",
                self.service,
                exc,
            )

    def _wait(self) -> bool:
        """Until the platform's routing state changes or ``interval`` s pass (a plain wait on
        a platform that cannot tell, or one whose wait fails); False once closed."""
        if self._watch is not None:
            try:
                self._generation = self._watch.wait_change(self._generation, self.interval)
                return not self._stop.is_set()
            except NotFound:  # a control API without the long-poll: poll from now on
                log.info("resolver: platform cannot tell changes; polling every %gs",
                         self.interval)
                self._watch = None
            except Exception as exc:  # unreachable: refresh fails too, and says so
                log.debug("resolver: wait for changes failed: %s", exc)
        return not self._stop.wait(self.interval)

    def _loop(self) -> None:
        while self._wait():
            try:
                self.refresh()
            except PlatformError as exc:
                self._note_failure(exc)
            except Exception as exc:  # a platform bug must not stop the refreshes
                log.exception("resolver refresh failed")
                self._note_failure(exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise RoutingSpecError(f"{where}: {url!r} is not an http://host:port URL without a path")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise RoutingSpecError(f"{where}: {url!r} has a bad port") from exc
    return url.rstrip("/")


def _endpoints(urls: str, where: str) -> tuple[Endpoint, ...]:
    out = []
    for u in urls.split(","):
        u = u.strip()
        if not u:
            continue
        url = _check_url(u, where)
        out.append(Endpoint(url=url, replica=urlsplit(url).netloc))
    if not out:
        raise RoutingSpecError(f"{where}: no replica URL given")
    return tuple(out)


def parse_target(spec: str) -> Route:
    """``REVISION=PERCENT=URL[,URL...]`` -> a route whose replicas are named by host:port."""
    parts = spec.split("=", 2)
    if len(parts) != 3 or not parts[0]:
        raise RoutingSpecError(
            f"target {spec!r}: expected REVISION=PERCENT=URL[,URL...], "
            "e.g. primary=100=http://127.0.0.1:9001,http://127.0.0.1:9002"
        )
    rev, pct, urls = parts
    try:
        percent = int(pct)
    except ValueError:
        raise RoutingSpecError(f"target {spec!r}: percent {pct!r} is not an integer") from None
    if not 0 <= percent <= 100:
        raise RoutingSpecError(f"target {spec!r}: percent {percent} is not within 0..100")
    return Route(rev, percent, _endpoints(urls, f"target {rev}"))


def parse_fallback(spec: str) -> Route:
    """``REVISION=URL[,URL...]`` -> the fallback route."""
    rev, sep, urls = spec.partition("=")
    if not sep or not rev:
        raise RoutingSpecError(
            f"fallback {spec!r}: expected REVISION=URL[,URL...], e.g. fallback=http://127.0.0.1:9100"
        )
    return Route(rev, 0, _endpoints(urls, f"fallback {rev}"))


def static_table(targets: list[str], fallback: str | None = None) -> RoutingTable:
    """The table of ``--target`` / ``--fallback`` flags; percents must sum to 100."""
    routes = tuple(parse_target(t) for t in targets)
    if not routes:
        raise RoutingSpecError("no target given: pass --target REVISION=PERCENT=URL[,URL...]")
    names = [r.revision for r in routes]
    if len(set(names)) != len(names):
        raise RoutingSpecError(f"targets name a revision twice: {', '.join(names)}")
    total = sum(r.percent for r in routes)
    if total != 100:
        raise RoutingSpecError(f"target percents sum to {total}, not 100")
    return RoutingTable(routes, parse_fallback(fallback) if fallback else None)

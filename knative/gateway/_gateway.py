"""The inference gateway's proxy step: the OpenAI API in front of the revisions.

A replica can die between two tokens, a node can lose its GPU, a rollout can be bad; the client
should see none of it. For every ``/v1/*`` request the gateway picks a revision by the traffic
weights (skipping one whose breaker is open), a ready replica of it by power of two choices on
in-flight requests (skipping replicas and nodes whose breakers are open), and calls it with a
per-try timeout inside an overall deadline. It retries only when that is safe — a connection
error, or a 502/503, before any byte went back to the client — within an Envoy-style retry
budget (concurrent retries at most a ratio of active requests, with a floor) and with jittered
backoff; when the primary's breaker is open or its tries are spent it asks the fallback revision.
Streams are handed to :mod:`knative.gateway._stream`, and resumed on another replica when they
break or stall (:mod:`knative.gateway._resume`, through :meth:`Gateway.reopen`). Every result
feeds the breakers of the revision, the node and the replica (4xx from upstream are the
client's errors and count as successes).

The ``/v1/*`` hot path is this plain WSGI callable in front of Flask (Flask's request machinery
costs about as much as the whole proxy step); probes, metrics and the admin API are Flask
routes (:mod:`knative.gateway._app`) over this object's public methods.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from knative.breakers import BreakerRegistry, Permit
from knative.gateway._admin import BreakerAdmin
from knative.gateway._exchange import Failure, ProxyRequest, Reply
from knative.gateway._guard import BreakerGuard
from knative.gateway._inflight import InFlight
from knative.gateway._metrics import GatewayMetrics
from knative.gateway._resume import INTERNAL_HEADER, Gaps, make_stream, resumable_body
from knative.gateway._routing import Endpoint, Resolver, Route, RoutingTable
from knative.gateway._settings import GatewaySettings
from knative.gateway._stream import Stream, StreamContext, StreamSource, read_first_events
from knative.gateway._upstream import Lease, PoolExhausted, UpstreamError, UpstreamPool
from knative.gateway._upstream import Response as UpstreamResponse
from knative.gateway._wire import (
    BodyTooLarge,
    forward_headers,
    read_body,
    respond_error,
    response_headers,
    status_line,
)

log = logging.getLogger(__name__)

Outcome = Reply | Stream | Failure


class Gateway:
    """The proxy step, as a WSGI callable for ``/v1/*``; ``rng`` draws the weighted split,
    the two choices and the backoff jitter, ``sleep`` waits out the backoff."""

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: Resolver,
        breakers: BreakerRegistry | None = None,
        pool: UpstreamPool | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.breakers = breakers
        self.pool = pool or UpstreamPool(settings.pool_size, settings.connect_timeout)
        self.instance = settings.instance or f"{socket.gethostname()}:{os.getpid()}"
        self.inflight = InFlight(settings.retry_budget_ratio, settings.retry_budget_min)
        self.metrics = GatewayMetrics(self.inflight, breakers)
        self.guard = BreakerGuard(breakers)
        self.admin = BreakerAdmin(settings.admin_token, breakers)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._streams = StreamContext(settings, self.metrics, self.inflight, self.guard,
                                      self.pool)
        self._gaps = Gaps()

    @property
    def active(self) -> int:
        """Requests in progress."""
        return self.inflight.active

    @property
    def retrying(self) -> int:
        """Requests in progress that are retrying."""
        return self.inflight.retrying

    # --- probes and lifecycle -----------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the routing table has a ready replica; the probe's JSON body."""
        n = self.resolver.table().ready_endpoints()
        if n == 0:
            return False, {"ready": False, "reason": "no ready replica in the routing table"}
        b = self.breakers
        return True, {"ready": True, "endpoints": n,
                      "breakers_degraded": b.degraded if b else None}

    def close(self) -> None:
        self.pool.close()

    # --- WSGI entry ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        req = self._admit(environ, start_response)
        if not isinstance(req, ProxyRequest):
            return req
        try:
            out = self._dispatch(req)
        except BaseException:
            self.inflight.end(req.ticket)
            raise
        if isinstance(out, Stream):
            start_response("200 OK", out.headers)
            return out
        self.inflight.end(req.ticket)
        if isinstance(out, Reply):
            out.headers.append(("Content-Length", str(len(out.body))))
            start_response(status_line(out.status), out.headers)
            return [out.body]
        extra = [("Retry-After", out.retry_after)] if out.retry_after else []
        return respond_error(start_response, out.status, out.kind, out.message, extra)

    def _admit(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> ProxyRequest | list[bytes]:
        """The request to forward (counted as in progress), or the error already answered."""
        method = environ.get("REQUEST_METHOD", "GET")
        path = quote(environ.get("PATH_INFO", "/"))
        if method not in ("GET", "POST"):
            return respond_error(
                start_response, 405, "invalid_request_error",
                f"method {method} is not allowed on {path}", [("Allow", "GET, POST")],
            )
        limit = self.settings.max_body_bytes
        try:
            body = read_body(environ, limit)
        except BodyTooLarge:
            return respond_error(start_response, 413, "invalid_request_error",
                                 f"body: larger than {limit} bytes")
        except (OSError, ValueError) as exc:
            return respond_error(start_response, 400, "invalid_request_error",
                                 f"body: could not be read ({exc})")
        qs = environ.get("QUERY_STRING")
        if qs:
            path = f"{path}?{qs}"
        req = ProxyRequest(method, path, body, forward_headers(environ, self.instance),
                           time.monotonic() + self.settings.deadline, self.inflight.begin())
        token = self.settings.internal_token
        if token and method == "POST" and resumable_body(path, body):
            req.resumable = True
            req.headers[INTERNAL_HEADER] = token
        return req

    # --- routing ------------------------------------------------------------------------------

    def _choose_route(self, table: RoutingTable) -> Route | None:
        usable = self.guard.usable
        routes = [r for r in table.routes if r.percent > 0 and usable(r)]
        if not routes:
            fb = table.fallback
            if fb is not None and usable(fb):
                self.metrics.inc("fallback_direct")
                return fb
            return None
        if len(routes) == 1:
            return routes[0]
        total = sum(r.percent for r in routes)
        x = self._rng.random() * total
        for r in routes:
            x -= r.percent
            if x < 0:
                return r
        return routes[-1]

    def _pick(self, route: Route, tried: set[str]) -> tuple[Endpoint, list[Permit]] | None:
        """A replica by power of two choices on tries in progress, with its try's permits."""
        guard = self.guard
        while True:
            cands = [e for e in route.endpoints
                     if e.ready and e.url not in tried and guard.allows_endpoint(e)]
            if not cands:
                return None
            if len(cands) == 1:
                ep = cands[0]
            else:
                a, c = self._rng.sample(cands, 2)
                ep = a if self.inflight.tries(a.url) <= self.inflight.tries(c.url) else c
            permits = guard.acquire_endpoint(ep)
            if permits is not None:
                return ep, permits
            tried.add(ep.url)  # a half-open breaker with no probe left: skip this one

    def _next_route(self, route: Route, fallback: Route | None) -> Route | None:
        if fallback is None or route.revision == fallback.revision:
            return None
        if not self.guard.usable(fallback):
            return None
        return fallback

    # --- retries ------------------------------------------------------------------------------

    def _may_retry(self, req: ProxyRequest) -> bool:
        if self.inflight.may_retry(req.ticket):
            return True
        self.metrics.inc("retry_budget_exhausted")
        return False

    def _backoff(self, retry: int, deadline: float) -> None:
        s = self.settings
        cap = min(s.backoff_max, s.backoff_base * (2 ** max(0, retry - 1)))
        wait = min(self._rng.random() * cap, max(0.0, deadline - time.monotonic()))
        if wait > 0:
            self._sleep(wait)

    def _dispatch(self, req: ProxyRequest) -> Outcome:
        table = self.resolver.table()
        route = self._choose_route(table)
        if route is None:
            self.metrics.inc("no_route")
            return Failure(503, "no_ready_replica",
                           "no ready replica for any target (breakers open or none ready)",
                           retryable=False, retry_after="1")
        fallback = table.fallback
        failure: Failure | None = None
        tried: set[str] = set()
        attempts = 0  # tries made, all routes
        tries = 0  # tries made on the current route
        max_tries = self.settings.max_tries
        entered = self.guard.enter(route, req)
        while True:
            if attempts > 0:
                if not self._may_retry(req):
                    break
                if 0 < tries < max_tries:
                    self._backoff(tries, req.deadline)
            if time.monotonic() >= req.deadline:
                failure = Failure(504, "deadline_exceeded",
                                  f"no answer within the {self.settings.deadline} s deadline",
                                  retryable=False)
                break
            picked = self._pick(route, tried) if entered and tries < max_tries else None
            if picked is None:
                nxt = self._next_route(route, fallback)
                if nxt is None:
                    break
                self.guard.settle(req, False if tries else None)
                route, tries = nxt, 0
                entered = self.guard.enter(route, req)
                self.metrics.inc("fallback_direct" if attempts == 0 else "fallback_after_failure")
                continue
            ep, permits = picked
            if attempts > 0:
                self.metrics.inc("retries")
            attempts += 1
            tries += 1
            out = self._attempt(route, ep, permits, req)
            if not isinstance(out, Failure):
                if fallback is not None and route.revision == fallback.revision:
                    self.metrics.inc("answered_by_fallback")
                return out
            failure = out
            tried.add(ep.url)
            self.metrics.inc(f"upstream_{out.kind}")
            if not out.retryable:
                break
        self.guard.settle(req, False if tries else None)
        if failure is None:
            return Failure(503, "no_ready_replica", "no ready replica left to try",
                           retryable=False, retry_after="1")
        return failure

    # --- resume -------------------------------------------------------------------------------

    def _resume_routes(self, revision: str) -> list[Route]:
        """Where a broken stream may continue: its revision, the others, then the fallback."""
        table = self.resolver.table()
        same = [r for r in table.routes if r.revision == revision]
        others = sorted((r for r in table.routes if r.revision != revision),
                        key=lambda r: -r.percent)
        fb = [table.fallback] if table.fallback is not None else []
        return [r for r in (*same, *others, *fb) if self.guard.usable(r)]

    def reopen(self, req: ProxyRequest, body: bytes, tried: set[str],
               revision: str) -> Stream | None:
        """A stream of ``body`` (a continuation of ``req``) from a ready replica not in
        ``tried``; None when none answers with a stream before the deadline."""
        cont = req.with_body(body)
        for route in self._resume_routes(revision):
            while time.monotonic() < req.deadline:
                picked = self._pick(route, tried)
                if picked is None:
                    break
                ep, permits = picked
                tried.add(ep.url)
                out = self._attempt(route, ep, permits, cont)
                if isinstance(out, Stream):
                    return out
                self.metrics.inc(f"resume_upstream_{getattr(out, 'kind', 'reply')}")
        return None

    # --- one try ------------------------------------------------------------------------------

    def _attempt(
        self, route: Route, ep: Endpoint, permits: list[Permit], req: ProxyRequest
    ) -> Outcome:
        s = self.settings
        t0 = time.monotonic()
        try_deadline = min(req.deadline, t0 + s.try_timeout)
        try:
            lease = self.pool.acquire(ep.host, ep.port, min(s.pool_timeout, try_deadline - t0))
        except PoolExhausted as exc:  # our bound, not the replica's fault: nothing recorded
            return Failure(503, "pool_exhausted", str(exc), retryable=True, retry_after="1")
        self.inflight.try_started(ep.url)
        # When this replica was chosen (for tracing, and to measure how fast an open breaker
        # stops routing).
        req.headers["x-surefoot-sent-at"] = f"{time.time():.6f}"
        keep = False
        streaming = False
        try:
            out, keep = self._exchange(route, ep, permits, lease, req, t0, try_deadline)
            streaming = isinstance(out, Stream)
            return out
        except TimeoutError:
            self.guard.record(permits, False, time.monotonic() - t0)
            return Failure(504, "upstream_timeout",
                           f"{route.revision} replica {ep.replica} did not answer within "
                           f"{min(s.try_timeout, s.deadline)} s",
                           retryable=s.retry_on_timeout)
        except (OSError, UpstreamError, ValueError) as exc:
            self.guard.record(permits, False, time.monotonic() - t0)
            return Failure(502, "upstream_connection_error",
                           f"{route.revision} replica {ep.replica}: {type(exc).__name__} "
                           f"{exc}".strip(),
                           retryable=True)
        finally:
            if not streaming:  # a stream gives its connection back when it ends
                self.pool.release(lease, keep)
                self.inflight.try_ended(ep.url)

    def _exchange(
        self, route: Route, ep: Endpoint, permits: list[Permit], lease: Lease,
        req: ProxyRequest, t0: float, try_deadline: float,
    ) -> tuple[Outcome, bool]:
        """Call the replica; the outcome, and whether its connection may be reused."""
        resp = self._send(lease, req, try_deadline)
        status = resp.status
        if status in (502, 503):
            retry_after = resp.header("retry-after")
            resp.read_all(try_deadline)
            self.guard.record(permits, False, time.monotonic() - t0)
            return Failure(status, "upstream_unavailable",
                           f"{route.revision} replica {ep.replica} answered {status}",
                           retryable=True, retry_after=retry_after), resp.reusable
        headers = response_headers(resp, route.revision, ep.replica)
        ctype = resp.header("content-type") or ""
        if 200 <= status < 300 and ctype.startswith("text/event-stream"):
            first, tail = read_first_events(resp, try_deadline)
            now = time.monotonic()
            src = StreamSource(lease, resp, permits, ep.url, now - t0, now - req.rev_t0,
                               route.revision)
            return make_stream(self._streams, req, src, first, tail, headers, self._gaps,
                               self.reopen), False
        body = resp.read_all(try_deadline)
        self.guard.record(permits, status < 500, time.monotonic() - t0)
        self.guard.settle(req, status < 500)
        return Reply(status, headers, body), resp.reusable

    def _send(self, lease: Lease, req: ProxyRequest, try_deadline: float) -> UpstreamResponse:
        """Send the request and read the response head. A reused keep-alive connection that
        turns out closed (the replica closed it while idle) is replaced by a fresh one once,
        in the same pool slot."""
        while True:
            conn = lease.conn
            try:
                remaining = try_deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("per-try timeout")
                if conn.sock is None:
                    conn.connect(min(self.settings.connect_timeout, remaining))
                return conn.request(req.method, req.path, req.headers, req.body, remaining)
            except TimeoutError:
                raise
            except ConnectionError:  # reset, refused, broken pipe, closed before the status line
                if not lease.reused:
                    raise
                self.pool.renew(lease)

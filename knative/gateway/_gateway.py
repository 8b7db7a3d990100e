"""The inference gateway's proxy step: the OpenAI API in front of the revisions.

A replica can die between two tokens, a node can lose its GPU, a rollout can be bad; the client
should see none of it. For every ``/v1/*`` request the gateway picks a revision by the traffic
weights (skipping one whose breaker is open), a ready replica of it with the fewest tries in
progress (skipping replicas and nodes whose breakers are open), and calls it with a
per-try timeout inside an overall deadline. It retries only when that is safe — a connection
error, or a 502/503, before any byte went back to the client — within an Envoy-style retry
budget (concurrent retries at most a ratio of active requests, with a floor) and with jittered
backoff. No revision is final: when one's breaker is open or its tries are spent the request
asks the next (the other routes, the fallback, the 0% targets: :mod:`knative.gateway._plan`),
and when nothing the breakers allow answers, the ready replicas behind breakers that are not
forced open; with no ready replica at all it waits in a bounded queue, within its deadline,
before it is shed with a 503 and ``Retry-After``. Streams are handed to
:mod:`knative.gateway._stream`, and resumed on another replica when they break or stall
(:mod:`knative.gateway._resume`, through :meth:`Gateway.reopen`). Every result
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
from knative.gateway._assemble import assemble
from knative.gateway._exchange import Failure, Progress, ProxyRequest, Reply
from knative.gateway._guard import BreakerGuard
from knative.gateway._inflight import InFlight
from knative.gateway._metrics import GatewayMetrics
from knative.gateway._plan import Planner
from knative.gateway._resume import Firsts, Gaps, first_event_missed, make_stream, prepare
from knative.gateway._routing import Endpoint, Resolver, Route, RoutingTable
from knative.gateway._settings import GatewaySettings
from knative.gateway._stream import (
    Liveness,
    Stream,
    StreamContext,
    StreamSource,
    read_first_events,
)
from knative.gateway._upstream import Lease, NoFirstByte, PoolExhausted, UpstreamError, UpstreamPool
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
        self._plan = Planner(self.guard, self.inflight, self._rng)
        live = Liveness()
        self._streams = StreamContext(settings, self.metrics, self.inflight, self.guard,
                                      self.pool, live)
        self._gaps = Gaps()
        self._firsts = Firsts(live)

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
        if isinstance(out, Stream) and not req.assemble:
            start_response("200 OK", out.headers)
            return out
        if isinstance(out, Stream):  # a plain answer read as a stream
            out = assemble(out, req)
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
        prepare(req, self.settings.internal_token)
        return req

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

    # --- routing ------------------------------------------------------------------------------

    def _dispatch(self, req: ProxyRequest) -> Outcome:
        """Ask the revisions in order, each first within its breakers, then as the last
        resort; with nothing left to try, wait for a ready replica (bounded) and ask again."""
        prog = Progress()
        while True:
            table = self.resolver.table()
            out = self._serve(req, prog, table)
            if out is not None:
                return out
            out = self._short_of_capacity(req, prog, table)
            if out is not None:
                return out

    def _serve(self, req: ProxyRequest, prog: Progress, table: RoutingTable) -> Outcome | None:
        """The answer, or the failure that ends the request; None when nothing is left to try."""
        order, first = self._plan.order(table)
        if prog.first is None and first is not None:
            prog.first = first.revision
        fallback = table.fallback.revision if table.fallback else None
        for last in (False, True):
            for route in order:
                if route.revision in prog.left or not self._plan.admits(route, last):
                    continue
                out = self._on_route(req, prog, route, last, fallback)
                if out is not None:
                    return out
        return None

    def _on_route(self, req: ProxyRequest, prog: Progress, route: Route, last: bool,
                  fallback: str | None) -> Outcome | None:
        """Up to ``max_tries`` tries on one revision (pass ``last``): the answer, a failure
        that ends the request, or None to go on to the next revision."""
        tries = counted = 0
        entered = False
        out: Outcome | None = None
        try:
            while tries < self.settings.max_tries:
                if not self._plan.candidates(route, prog.tried, last):
                    return None
                out = self._before_try(req, prog, route, tries)
                if out is not None or route.revision in prog.left:
                    return out
                if not last and not entered:
                    entered = self.guard.enter(route, req)
                    if not entered:  # half-open, its probes taken: the last resort may ask
                        return None
                picked = self._plan.pick(route, prog.tried, last)
                if picked is None:
                    return None
                if tries == 0:
                    self._note_move(route, prog, fallback)
                tries += 1
                out = self._try(route, picked, req, prog, last)
                if not isinstance(out, Failure):
                    if route.revision == fallback:
                        self.metrics.inc("answered_by_fallback")
                    return out
                if out.kind != "pool_exhausted":  # our own bound says nothing of the revision
                    counted += 1
                if not out.retryable:
                    return out
            return None
        finally:
            if entered and not isinstance(out, Stream):  # a stream settles when it ends
                self.guard.settle(req, False if counted else None)

    def _before_try(self, req: ProxyRequest, prog: Progress, route: Route,
                    tries: int) -> Failure | None:
        """Before the next try on ``route``: the failure that ends the request (its deadline
        passed), else None. Another try on a revision the request already tried is a retry:
        bounded by the retry budget (when it says no the request leaves that revision) and
        after a backoff; the first try on another revision is failover, which it does not
        bound."""
        if route.revision in prog.revisions:
            if not self._may_retry(req):
                prog.left.add(route.revision)
                return None
            if tries > 0:
                self._backoff(tries, req.deadline)
        if time.monotonic() >= req.deadline:
            return Failure(504, "deadline_exceeded",
                           f"no answer within the {self.settings.deadline} s deadline",
                           retryable=False)
        return None

    def _try(self, route: Route, picked: tuple[Endpoint, list[Permit]], req: ProxyRequest,
             prog: Progress, last: bool) -> Outcome:
        """One try, counted in the request's progress and the metrics."""
        ep, permits = picked
        if prog.attempts > 0:
            self.metrics.inc("retries")
        if last:
            self.metrics.inc("last_resort")
        prog.attempts += 1
        prog.revisions.add(route.revision)
        out = self._attempt(route, ep, permits, req)
        if isinstance(out, Failure):
            prog.failure = out
            prog.tried.add(ep.url)
            self.metrics.inc(f"upstream_{out.kind}")
            if out.kind == "upstream_unavailable":
                prog.answered = True
        return out

    def _note_move(self, route: Route, prog: Progress, fallback: str | None) -> None:
        """Count a request going to a revision the traffic split did not draw."""
        if route.revision == prog.first:
            return
        after = "direct" if prog.attempts == 0 else "after_failure"
        self.metrics.inc(f"fallback_{after}" if route.revision == fallback else f"failover_{after}")

    # --- short of capacity --------------------------------------------------------------------

    def _short_of_capacity(self, req: ProxyRequest, prog: Progress,
                           table: RoutingTable) -> Failure | None:
        """Nothing was left to try. A replica's own no (or the last failure, when the retry
        budget turned the request away) is passed on; ready replicas behind
        forced-open breakers only are a 503 at once; else the request waits for a ready
        replica (None: look again) or is shed."""
        if prog.answered and prog.failure is not None and prog.failure.status == 503:
            return self._wait_for_room(req, prog)
        if (prog.answered or prog.left) and prog.failure is not None:
            return prog.failure
        n, forced = self._plan.capacity(table, prog.tried)
        if n:
            return None  # the table changed while we tried: look again
        if forced:
            self.metrics.inc("shed_forced_open")
            return Failure(503, "no_ready_replica",
                           "no ready replica may take the request: every ready replica is "
                           f"behind a breaker forced open ({', '.join(forced)})",
                           retryable=False, retry_after="1")
        return self._wait(req, prog, table)

    def _wait_for_room(self, req: ProxyRequest, prog: Progress) -> Failure | None:
        """Every replica tried answered 503 (its queue full, or busy), or the retry budget
        left no more tries after one did: capacity is short, not gone. Wait in the bounded
        queue, backing off, and ask again (None). The replica's 503 is passed on when the
        queue is full or the wait would pass the deadline or the queue timeout."""
        s = self.settings
        failure = prog.failure
        assert failure is not None
        left = min(s.queue_timeout - prog.waited, req.deadline - time.monotonic())
        delay = min(max(s.queue_poll, 0.05 * 2 ** prog.busy_waits), 1.0)
        if left <= delay or not self.inflight.wait_begin(s.queue_size):
            return failure
        self.metrics.inc("queued_busy")
        try:
            self._sleep(delay * (0.5 + self._rng.random() / 2))  # jittered: no herd
        finally:
            prog.waited += delay
            self.inflight.wait_end()
        prog.busy_waits += 1
        # having waited its turn in the bounded queue, the request asks again as new: the
        # retry budget bounds retries on the spot, not turns taken after a wait
        prog.tried.clear()
        prog.left.clear()
        prog.revisions.clear()
        prog.answered = False
        return None

    def _wait(self, req: ProxyRequest, prog: Progress, table: RoutingTable) -> Failure | None:
        """Wait in the bounded queue for a ready replica to try: None when one is there, the
        503 that sheds the request when the queue is full or its wait ran out."""
        s = self.settings
        by_deadline = req.deadline - time.monotonic()
        left = min(s.queue_timeout - prog.waited, by_deadline)
        deadline_bound = by_deadline <= s.queue_timeout - prog.waited
        if left <= 0 or not self.inflight.wait_begin(s.queue_size):
            full = left > 0
            self.metrics.inc("shed_queue_full" if full else "shed_deadline")
            if not full:
                why = self._shed_reason(prog, deadline_bound)
            elif s.queue_size == 0:
                why = "none is ready now, and waiting for one is off (queue_size 0)"
            else:
                why = f"the wait queue is full ({s.queue_size} requests wait for a ready replica)"
            return Failure(503, "no_ready_replica", f"no ready replica for any target: {why}",
                           retryable=False, retry_after="1")
        self.metrics.inc("queued")
        waited = 0.0
        try:
            while waited < left:
                step = min(s.queue_poll, left - waited)
                self._sleep(step)
                waited += step
                now = self.resolver.table()
                if now is not table:  # a new view of the replicas: those tried may be back
                    prog.tried.clear()
                    table = now
                if self._plan.capacity(now, prog.tried)[0]:
                    return None
        finally:
            prog.waited += waited
            self.inflight.wait_end()
        self.metrics.inc("shed_deadline")
        return Failure(503, "no_ready_replica",
                       f"no ready replica for any target: "
                       f"{self._shed_reason(prog, deadline_bound)}",
                       retryable=False, retry_after="1")

    def _shed_reason(self, prog: Progress, by_deadline: bool) -> str:
        bound = (f"its {self.settings.deadline} s deadline" if by_deadline
                 else f"the queue timeout of {self.settings.queue_timeout} s")
        last = f"; last failure: {prog.failure.message}" if prog.failure else ""
        return (f"none became ready within {bound} (waited {prog.waited:.2f} s for one; "
                f"none of any revision is ready, or every ready one failed{last})")

    # --- resume -------------------------------------------------------------------------------

    def _resume_routes(self, revision: str) -> list[Route]:
        """Where a broken stream may continue: its revision, the others, then the fallback
        and the 0% targets."""
        order, _ = self._plan.order(self.resolver.table())
        return sorted(order, key=lambda r: r.revision != revision)

    def reopen(self, req: ProxyRequest, body: bytes, tried: set[str],
               revision: str) -> Stream | None:
        """A stream of ``body`` (a continuation of ``req``) from a ready replica not in
        ``tried``; None when none answers with a stream before the deadline. The least busy
        replica (fewest tries in progress) of any revision takes it, the resume order (its
        own revision first) deciding among equals: the client waits mid-stream, and a busy
        replica would queue the continuation behind its own work (the streams of a replica
        that died all resume at once)."""
        cont = req.with_body(body)
        routes = self._resume_routes(revision)
        busiest = max((self.inflight.tries(e.url) for r in routes for e in r.endpoints),
                      default=0)
        passes = [(n, False) for n in range(busiest)] + [(None, False), (None, True)]
        for at_most, last in passes:
            for route in routes:
                if not self._plan.admits(route, last):
                    continue
                while time.monotonic() < req.deadline:
                    picked = self._plan.pick(route, tried, last, at_most)
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
        try:  # the pick counted this try in progress (Planner.pick); no lease, no try
            lease = self.pool.acquire(ep.host, ep.port, min(s.pool_timeout, try_deadline - t0))
        except PoolExhausted as exc:  # our bound, not the replica's fault: nothing recorded
            self.inflight.try_ended(ep.url)
            return Failure(503, "pool_exhausted", str(exc), retryable=True, retry_after="1")
        except BaseException:
            self.inflight.try_ended(ep.url)
            raise
        ahead = self.inflight.tries(ep.url) - 1
        lease.wait = self._firsts.waiter(req, ep, ahead, t0, try_deadline, s)
        # When this replica was chosen (for tracing, and to measure how fast an open breaker
        # stops routing).
        req.headers["x-surefoot-sent-at"] = f"{time.time():.6f}"
        keep = False
        streaming = False
        try:
            out, keep = self._exchange(route, ep, permits, lease, req, t0, try_deadline)
            streaming = isinstance(out, Stream)
            if isinstance(out, Stream):
                self._firsts.observe(ep.url, out.first_wait, ahead)
            return out
        except NoFirstByte as exc:  # a stall before the first event: go on elsewhere
            self.guard.record(permits, False, time.monotonic() - t0)
            self.metrics.resumed("first_event")
            return first_event_missed(route.revision, ep.replica, exc)
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
            stall = self._gaps.stall_timeout(ep.url, 0.0, self.settings) if req.first_event \
                else None
            first, tail = read_first_events(resp, try_deadline, stall)
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
                return conn.request(req.method, req.path, req.headers, req.body, remaining,
                                    lease.wait)
            except TimeoutError:
                raise
            except ConnectionError:  # reset, refused, broken pipe, closed before the status line
                if not lease.reused:
                    raise
                self.pool.renew(lease)

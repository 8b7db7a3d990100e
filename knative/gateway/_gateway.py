"""The inference gateway: the OpenAI API in front of the revisions, with the shared breakers.

A replica can die between two tokens, a node can lose its GPU, a rollout can be bad; the client
should see none of it. For every ``/v1/*`` request the gateway picks a revision by the traffic
weights (skipping one whose breaker is open), a ready replica of it by power of two choices on
in-flight requests (skipping replicas and nodes whose breakers are open), and calls it with a
per-try timeout inside an overall deadline. It retries only when that is safe — a connection
error, or a 502/503, before any byte went back to the client — within an Envoy-style retry
budget (concurrent retries at most a ratio of active requests, with a floor) and with jittered
backoff; when the primary's breaker is open or its tries are spent it asks the fallback revision.
Streams are passed through event by event, never buffered whole; if the upstream dies in the
middle of one, the client gets an SSE error event and a clean end, not a hang. Every result
feeds the breakers of the revision, the node and the replica (4xx from upstream are the client's
errors and count as successes).

The ``/v1/*`` hot path is a plain WSGI callable in front of Flask (Flask's request machinery
costs about as much as the whole proxy step); probes, metrics and the admin API are Flask routes.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from envreader import env_values
from knative.breakers import (
    ACTIONS,
    BreakerError,
    BreakerRegistry,
    BreakerUnavailable,
    InvalidBreakerKey,
    Permit,
    check_key,
    node_key,
    replica_key,
    revision_key,
)
from knative.gateway._routing import Endpoint, Resolver, Route, RoutingTable
from knative.gateway._upstream import Lease, PoolExhausted, UpstreamError, UpstreamPool
from knative.gateway._upstream import Response as UpstreamResponse

log = logging.getLogger(__name__)

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "date",
        "server",
    }
)
_ADMIN_ACTIONS = ACTIONS  # force_open, force_closed, reset, disable, and the natural moves
_MAX_EVENT = 1 << 20  # an SSE event larger than this is passed on without waiting for its end


class GatewaySettingsError(ValueError):
    """Gateway settings out of range; the message names every bad field."""


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway calls upstream. Durations in seconds.

    ``try_timeout`` bounds one try up to the response headers (and, for a stream, its first
    event); ``deadline`` bounds the whole request, streams included; ``stream_idle_timeout``
    bounds the gap between two stream chunks. ``max_tries`` counts tries on one revision before
    the fallback is asked.
    """

    try_timeout: float = 60.0
    connect_timeout: float = 1.0
    deadline: float = 300.0
    stream_idle_timeout: float = 30.0
    max_tries: int = 3
    retry_on_timeout: bool = False
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 3
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    pool_size: int = 64
    pool_timeout: float = 1.0
    max_body_bytes: int = 8 * 1024 * 1024
    admin_token: str | None = None
    instance: str = ""

    def __post_init__(self) -> None:
        errors = []
        for name in ("try_timeout", "connect_timeout", "deadline", "stream_idle_timeout",
                     "pool_timeout"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 < v <= 86_400:
                errors.append(f"{name}: {v!r} is not a positive number of seconds")
        for name in ("backoff_base", "backoff_max"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 <= v <= 60:
                errors.append(f"{name}: {v!r} is not within 0..60 seconds")
        if not isinstance(self.max_tries, int) or not 1 <= self.max_tries <= 10:
            errors.append(f"max_tries: {self.max_tries!r} is not an integer in 1..10")
        r = self.retry_budget_ratio
        if not isinstance(r, int | float) or not 0 <= r <= 1:
            errors.append(f"retry_budget_ratio: {r!r} is not within 0..1")
        if not isinstance(self.retry_budget_min, int) or self.retry_budget_min < 0:
            errors.append(f"retry_budget_min: {self.retry_budget_min!r} is not an integer >= 0")
        if not isinstance(self.pool_size, int) or not 1 <= self.pool_size <= 10_000:
            errors.append(f"pool_size: {self.pool_size!r} is not an integer in 1..10000")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1:
            errors.append(f"max_body_bytes: {self.max_body_bytes!r} is not an integer >= 1")
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or len(self.admin_token) < 8
        ):
            errors.append("admin_token: use at least 8 characters (or none to disable admin)")
        if errors:
            raise GatewaySettingsError("; ".join(errors))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> GatewaySettings:
        """``SUREFOOT_GATEWAY_<FIELD>`` variables, then ``overrides`` that are not None."""
        values, errors = env_values(cls, "SUREFOOT_GATEWAY_",
                                    os.environ if env is None else env, overrides)
        if errors:
            raise GatewaySettingsError("; ".join(errors))
        return replace(cls(), **values)


class _Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Failure:
    """A try that did not produce an answer worth passing on."""

    __slots__ = ("kind", "message", "retry_after", "retryable", "status")

    def __init__(
        self, status: int, kind: str, message: str, retryable: bool, retry_after: str | None = None
    ) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class _Request:
    __slots__ = (
        "body",
        "deadline",
        "ended",
        "headers",
        "method",
        "path",
        "retrying",
        "rev_permit",
        "rev_t0",
    )

    def __init__(self, method: str, path: str, body: bytes, headers: dict[str, str],
                 deadline: float) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.deadline = deadline
        self.retrying = False
        self.ended = False
        # The revision's breaker judges whole requests on that revision (after retries on its
        # other replicas), so its permit is taken once per revision and settled once.
        self.rev_permit: Permit | None = None
        self.rev_t0 = 0.0


class _BodyTooLarge(Exception):
    pass


_STATUS_TEXT = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def _status_line(code: int) -> str:
    return f"{code} {_STATUS_TEXT.get(code) or http.client.responses.get(code, 'Unknown')}"


def _error_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def sse_error(status: int, kind: str, message: str) -> bytes:
    """The event a client gets when a stream cannot be finished."""
    return b"data: " + _error_body(status, kind, message) + b"\n\n"


class Metrics:
    """Counters of one gateway process, exposed in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def get(self, name: str) -> int:
        return self.counts.get(name, 0)


class Gateway:
    """The proxy step, as a WSGI callable for ``/v1/*``."""

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: Resolver,
        breakers: BreakerRegistry | None = None,
        pool: UpstreamPool | None = None,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.breakers = breakers
        self.pool = pool or UpstreamPool(settings.pool_size, settings.connect_timeout)
        self.instance = settings.instance or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = Metrics()
        self._rand = rand
        self._sleep = sleep
        self._lock = threading.Lock()
        self.active = 0
        self.retrying = 0
        self._inflight: dict[str, int] = {}
        self._keys: dict[tuple[str, str | None], tuple[str, ...]] = {}

    # --- WSGI entry ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        path = quote(environ.get("PATH_INFO", "/"))
        if method not in ("GET", "POST"):
            return _respond_error(
                start_response, 405, "invalid_request_error",
                f"method {method} is not allowed on {path}", [("Allow", "GET, POST")],
            )
        try:
            body = _read_body(environ, self.settings.max_body_bytes)
        except _BodyTooLarge:
            return _respond_error(
                start_response, 413, "invalid_request_error",
                f"body: larger than {self.settings.max_body_bytes} bytes",
            )
        except (OSError, ValueError) as exc:
            return _respond_error(start_response, 400, "invalid_request_error",
                                  f"body: could not be read ({exc})")
        qs = environ.get("QUERY_STRING")
        if qs:
            path = f"{path}?{qs}"
        req = _Request(method, path, body, self._forward_headers(environ),
                       time.monotonic() + self.settings.deadline)
        with self._lock:
            self.active += 1
        try:
            out = self._dispatch(req)
        except BaseException:
            self._end(req)
            raise
        if isinstance(out, _Stream):
            start_response("200 OK", out.headers)
            return out
        self._end(req)
        if isinstance(out, _Reply):
            out.headers.append(("Content-Length", str(len(out.body))))
            start_response(_status_line(out.status), out.headers)
            return [out.body]
        extra = [("Retry-After", out.retry_after)] if out.retry_after else []
        return _respond_error(start_response, out.status, out.kind, out.message, extra)

    def _forward_headers(self, environ: dict[str, Any]) -> dict[str, str]:
        h: dict[str, str] = {}
        for k, v in environ.items():
            if k.startswith("HTTP_"):
                name = k[5:].replace("_", "-").lower()
                if name not in _HOP:
                    h[name] = v
        ct = environ.get("CONTENT_TYPE")
        if ct:
            h["content-type"] = ct
        h["x-surefoot-gateway"] = self.instance
        return h

    def _end(self, req: _Request) -> None:
        with self._lock:
            if req.ended:
                return
            req.ended = True
            self.active -= 1
            if req.retrying:
                self.retrying -= 1

    # --- routing ------------------------------------------------------------------------------

    def _allows(self, key: str) -> bool:
        b = self.breakers
        return b is None or b.allows(key)

    def _keys_for(self, ep: Endpoint) -> tuple[str, ...]:
        """The breakers of one try: the node's and the replica's."""
        k = (ep.replica, ep.node)
        keys = self._keys.get(k)
        if keys is None:
            keys = (node_key(ep.node), replica_key(ep.replica)) if ep.node else (
                replica_key(ep.replica),)
            self._keys[k] = keys
        return keys

    def _enter(self, route: Route, req: _Request) -> bool:
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

    def _settle(self, req: _Request, ok: bool | None, seconds: float | None = None) -> None:
        """Record the request's result on the revision it ended on (``None``: nothing tried)."""
        p = req.rev_permit
        if p is None:
            return
        req.rev_permit = None
        if ok is not None and self.breakers is not None:
            self.breakers.record(
                p, ok, seconds if seconds is not None else time.monotonic() - req.rev_t0)

    def _usable(self, route: Route) -> bool:
        if not self._allows(revision_key(route.revision)):
            return False
        return any(e.ready for e in route.endpoints)

    def _choose_route(self, table: RoutingTable) -> Route | None:
        routes = [r for r in table.routes if r.percent > 0 and self._usable(r)]
        if not routes:
            fb = table.fallback
            if fb is not None and self._usable(fb):
                self.metrics.inc("fallback_direct")
                return fb
            return None
        if len(routes) == 1:
            return routes[0]
        total = sum(r.percent for r in routes)
        x = self._rand() * total
        for r in routes:
            x -= r.percent
            if x < 0:
                return r
        return routes[-1]

    def _pick(self, route: Route, tried: set[str]) -> tuple[Endpoint, list[Permit]] | None:
        b = self.breakers
        while True:
            cands = [
                e for e in route.endpoints
                if e.ready and e.url not in tried
                and (b is None or all(b.allows(k) for k in self._keys_for(e)))
            ]
            if not cands:
                return None
            if len(cands) == 1:
                ep = cands[0]
            else:
                a, c = random.sample(cands, 2)
                fl = self._inflight
                ep = a if fl.get(a.url, 0) <= fl.get(c.url, 0) else c
            if b is None:
                return ep, []
            permits = []
            for k in self._keys_for(ep):
                p = b.acquire(k)
                if p is None:
                    break
                permits.append(p)
            else:
                return ep, permits
            tried.add(ep.url)  # a half-open breaker with no probe left: skip this one

    def _may_retry(self, req: _Request) -> bool:
        s = self.settings
        with self._lock:
            if req.retrying:
                return True
            if self.retrying < max(s.retry_budget_min, s.retry_budget_ratio * self.active):
                self.retrying += 1
                req.retrying = True
                return True
        self.metrics.inc("retry_budget_exhausted")
        return False

    def _backoff(self, retry: int, deadline: float) -> None:
        s = self.settings
        cap = min(s.backoff_max, s.backoff_base * (2 ** max(0, retry - 1)))
        wait = min(self._rand() * cap, max(0.0, deadline - time.monotonic()))
        if wait > 0:
            self._sleep(wait)

    def _dispatch(self, req: _Request) -> _Reply | _Stream | _Failure:
        table = self.resolver.table()
        route = self._choose_route(table)
        if route is None:
            self.metrics.inc("no_route")
            return _Failure(503, "no_ready_replica",
                            "no ready replica for any target (breakers open or none ready)",
                            retryable=False, retry_after="1")
        fallback = table.fallback
        failure: _Failure | None = None
        tried: set[str] = set()
        attempts = 0  # tries made, all routes
        tries = 0  # tries made on the current route
        max_tries = self.settings.max_tries
        entered = self._enter(route, req)
        while True:
            if attempts > 0:
                if not self._may_retry(req):
                    break
                if 0 < tries < max_tries:
                    self._backoff(tries, req.deadline)
            if time.monotonic() >= req.deadline:
                failure = _Failure(504, "deadline_exceeded",
                                   f"no answer within the {self.settings.deadline} s deadline",
                                   retryable=False)
                break
            picked = self._pick(route, tried) if entered and tries < max_tries else None
            if picked is None:
                nxt = self._next_route(route, fallback)
                if nxt is None:
                    break
                self._settle(req, False if tries else None)
                route, tries = nxt, 0
                entered = self._enter(route, req)
                self.metrics.inc("fallback_direct" if attempts == 0 else "fallback_after_failure")
                continue
            ep, permits = picked
            if attempts > 0:
                self.metrics.inc("retries")
            attempts += 1
            tries += 1
            out = self._attempt(route, ep, permits, req)
            if not isinstance(out, _Failure):
                if fallback is not None and route.revision == fallback.revision:
                    self.metrics.inc("answered_by_fallback")
                return out
            failure = out
            tried.add(ep.url)
            self.metrics.inc(f"upstream_{out.kind}")
            if not out.retryable:
                break
        self._settle(req, False if tries else None)
        if failure is None:
            return _Failure(503, "no_ready_replica", "no ready replica left to try",
                            retryable=False, retry_after="1")
        return failure

    def _next_route(self, route: Route, fallback: Route | None) -> Route | None:
        if fallback is None or route.revision == fallback.revision:
            return None
        if not self._usable(fallback):
            return None
        return fallback

    # --- one try ------------------------------------------------------------------------------

    def _record(self, permits: list[Permit], ok: bool, seconds: float) -> None:
        b = self.breakers
        if b is not None:
            for p in permits:
                b.record(p, ok, seconds)

    def _attempt(
        self, route: Route, ep: Endpoint, permits: list[Permit], req: _Request
    ) -> _Reply | _Stream | _Failure:
        s = self.settings
        t0 = time.monotonic()
        try_deadline = min(req.deadline, t0 + s.try_timeout)
        url = ep.url
        try:
            lease = self.pool.acquire(ep.host, ep.port, min(s.pool_timeout, try_deadline - t0))
        except PoolExhausted as exc:  # our bound, not the replica's fault: nothing recorded
            return _Failure(503, "pool_exhausted", str(exc), retryable=True, retry_after="1")
        with self._lock:
            self._inflight[url] = self._inflight.get(url, 0) + 1
        # When this replica was chosen (for tracing, and to measure how fast an open breaker
        # stops routing).
        req.headers["x-surefoot-sent-at"] = f"{time.time():.6f}"
        keep = False
        streaming = False
        try:
            try:
                resp = self._send(lease, req, try_deadline)
                status = resp.status
                ctype = resp.header("content-type") or ""
                if status in (502, 503):
                    retry_after = resp.header("retry-after")
                    resp.read_all(try_deadline)
                    keep = resp.reusable
                    self._record(permits, False, time.monotonic() - t0)
                    return _Failure(status, "upstream_unavailable",
                                    f"{route.revision} replica {ep.replica} answered {status}",
                                    retryable=True, retry_after=retry_after)
                headers = _response_headers(resp, route.revision, ep.replica)
                if 200 <= status < 300 and ctype.startswith("text/event-stream"):
                    first, tail = _read_first_events(resp, try_deadline)
                    streaming = True
                    return _Stream(self, lease, resp, first, tail, permits, req, url,
                                   time.monotonic() - t0, time.monotonic() - req.rev_t0,
                                   headers)
                body = resp.read_all(try_deadline)
                keep = resp.reusable
            except TimeoutError:
                self._record(permits, False, time.monotonic() - t0)
                return _Failure(504, "upstream_timeout",
                                f"{route.revision} replica {ep.replica} did not answer within "
                                f"{min(s.try_timeout, s.deadline)} s",
                                retryable=s.retry_on_timeout)
            except (OSError, UpstreamError, ValueError) as exc:
                self._record(permits, False, time.monotonic() - t0)
                return _Failure(502, "upstream_connection_error",
                                f"{route.revision} replica {ep.replica}: {type(exc).__name__} "
                                f"{exc}".strip(),
                                retryable=True)
            self._record(permits, status < 500, time.monotonic() - t0)
            self._settle(req, status < 500)
            return _Reply(status, headers, body)
        finally:
            if not streaming:  # a stream gives its connection back when it ends
                self.pool.release(lease, keep)
                with self._lock:
                    self._inflight[url] -= 1

    def _send(self, lease: Lease, req: _Request, try_deadline: float) -> UpstreamResponse:
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

    def close(self) -> None:
        self.pool.close()


class _Stream:
    """A streamed answer passed through event by event; the WSGI server calls ``close``."""

    def __init__(
        self, gw: Gateway, lease: Lease, resp: UpstreamResponse, first: bytes,
        tail: bytes, permits: list[Permit], req: _Request, url: str, ttfb: float,
        rev_ttfb: float, headers: list[tuple[str, str]],
    ) -> None:
        self.gw = gw
        self.lease = lease
        self.resp = resp
        self.first = first
        self.tail = tail
        self.permits = permits
        self.req = req
        self.url = url
        self.ttfb = ttfb
        self.rev_ttfb = rev_ttfb
        self.headers = headers + [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        gw = self.gw
        idle = gw.settings.stream_idle_timeout
        if self.first:
            yield self.first
        resp = self.resp
        while True:
            remaining = self.req.deadline - time.monotonic()
            if remaining <= 0:
                self._finish(False, False)
                gw.metrics.inc("stream_deadline")
                yield sse_error(504, "deadline_exceeded",
                                f"the stream did not finish within the {gw.settings.deadline} s "
                                "deadline")
                return
            try:
                data = resp.read_some(min(idle, remaining))
            except TimeoutError:
                self._finish(False, False)
                if remaining < idle:
                    gw.metrics.inc("stream_deadline")
                    yield sse_error(504, "deadline_exceeded",
                                    f"the stream did not finish within the "
                                    f"{gw.settings.deadline} s deadline")
                else:
                    gw.metrics.inc("stream_stalled")
                    yield sse_error(504, "upstream_timeout",
                                    f"the upstream sent nothing for {idle:.1f} s")
                return
            except (OSError, UpstreamError, ValueError):
                self._finish(False, False)
                gw.metrics.inc("stream_broken")
                yield sse_error(502, "upstream_connection_error",
                                "the upstream closed the stream before it finished")
                return
            if not data:
                tail, self.tail = self.tail, b""
                self._finish(True, resp.reusable)
                if tail:
                    yield tail
                return
            buf = self.tail + data if self.tail else data
            cut = buf.rfind(b"\n\n")
            if cut < 0 and len(buf) < _MAX_EVENT:
                self.tail = buf
                continue
            if cut < 0:
                cut = len(buf) - 2
            self.tail = buf[cut + 2:]
            yield buf[: cut + 2]

    def _finish(self, ok: bool, reusable: bool) -> None:
        if self.done:
            return
        self.done = True
        gw = self.gw
        gw._record(self.permits, ok, self.ttfb)
        gw._settle(self.req, ok, self.rev_ttfb)
        gw.pool.release(self.lease, reusable)
        with gw._lock:
            gw._inflight[self.url] -= 1
        gw._end(self.req)

    def close(self) -> None:
        # Finished, or the client went away mid-stream (not the upstream's fault).
        self._finish(True, False)


# --- helpers ----------------------------------------------------------------------------------


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    cl = environ.get("CONTENT_LENGTH")
    if cl:
        n = int(cl)
        if n > limit:
            raise _BodyTooLarge()
        return bytes(stream.read(n)) if n else b""
    if environ.get("REQUEST_METHOD") == "GET":
        return b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _BodyTooLarge()
    return bytes(data)


def _read_first_events(resp: UpstreamResponse, deadline: float) -> tuple[bytes, bytes]:
    """Read up to the end of the first complete SSE event: a stream that dies before it can
    still be retried (no byte has gone to the client)."""
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("per-try timeout before the first event")
        chunk = resp.read_some(remaining)
        if not chunk:
            return buf, b""
        buf += chunk
        cut = buf.rfind(b"\n\n")
        if cut >= 0:
            return buf[: cut + 2], buf[cut + 2:]
        if len(buf) >= _MAX_EVENT:
            return buf, b""


def _response_headers(
    resp: UpstreamResponse, revision: str, replica: str
) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in resp.headers if k.lower() not in _HOP]
    out.append(("X-Surefoot-Revision", revision))
    out.append(("X-Surefoot-Replica", replica))
    return out


def _respond_error(
    start_response: Callable[..., Any], status: int, kind: str, message: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = _error_body(status, kind, message)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if extra:
        headers += extra
    start_response(_status_line(status), headers)
    return [body]


# --- the Flask app --------------------------------------------------------------------------


class AdminError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def gateway_of(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["surefoot.gateway"]
    return gw


def create_app(
    settings: GatewaySettings,
    resolver: Resolver,
    breakers: BreakerRegistry | None = None,
    *,
    pool: UpstreamPool | None = None,
) -> Flask:
    """The gateway as a WSGI app: ``/v1/*`` proxied, plus ``/healthz``, ``/readyz``,
    ``/metrics``, ``GET /admin/breakers`` and ``POST /admin/breakers/<key>``."""
    app = Flask("knative.gateway")
    gw = Gateway(settings, resolver, breakers, pool)
    app.extensions["surefoot.gateway"] = gw

    def check_token() -> None:
        token = settings.admin_token
        if not token:
            raise AdminError(403, "the admin API is disabled: no admin token is configured "
                                  "(SUREFOOT_GATEWAY_ADMIN_TOKEN)")
        auth = request.headers.get("Authorization")
        if not auth:
            raise AdminError(401, "Authorization: missing; send 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": 'Bearer realm="surefoot-admin"'})
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AdminError(401, "Authorization: expected 'Bearer <token>'",
                             {"WWW-Authenticate": 'Bearer realm="surefoot-admin"'})
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise AdminError(403, "Authorization: the token is not valid")

    def registry() -> BreakerRegistry:
        if breakers is None:
            raise AdminError(503, "breakers are not configured on this gateway")
        return breakers

    @app.errorhandler(AdminError)
    def _admin_error(exc: AdminError) -> Response:
        r = jsonify({"error": {"message": str(exc), "code": exc.status}})
        r.status_code = exc.status
        r.headers.update(exc.headers)
        return r

    @app.errorhandler(BreakerUnavailable)
    def _unavailable(exc: BreakerUnavailable) -> Response:
        r = jsonify({"error": {"message": f"breaker store unavailable: {exc}", "code": 503}})
        r.status_code = 503
        r.headers["Retry-After"] = "1"
        return r

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        r = jsonify({"error": {"message": exc.description, "code": code}})
        r.status_code = code
        return r

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int]:
        n = resolver.table().ready_endpoints()
        if n == 0:
            return jsonify({"ready": False, "reason": "no ready replica in the routing table"}), 503
        return jsonify({"ready": True, "endpoints": n,
                        "breakers_degraded": breakers.degraded if breakers else None})

    @app.get("/metrics")
    def metrics() -> Response:
        lines = [
            "# TYPE surefoot_gateway_active_requests gauge",
            f"surefoot_gateway_active_requests {gw.active}",
            "# TYPE surefoot_gateway_active_retries gauge",
            f"surefoot_gateway_active_retries {gw.retrying}",
            "# TYPE surefoot_gateway_events_total counter",
        ]
        for name, v in sorted(gw.metrics.counts.items()):
            lines.append(f'surefoot_gateway_events_total{{event="{name}"}} {v}')
        if breakers is not None:
            lines.append("# TYPE surefoot_gateway_breaker_state gauge")
            for key, st in sorted(breakers.view().items()):
                lines.append(
                    f'surefoot_gateway_breaker_state{{key="{key}",state="{st.state}"}} 1'
                )
            lines.append("# TYPE surefoot_gateway_breakers_degraded gauge")
            lines.append(f"surefoot_gateway_breakers_degraded {int(breakers.degraded)}")
        return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")

    @app.get("/admin/breakers")
    def list_breakers() -> Response:
        check_token()
        reg = registry()
        rows, stale = reg.statuses()
        age = reg.view_age
        return jsonify({
            "breakers": [s.to_json() for s in rows],
            "stale": stale,
            "degraded": reg.degraded,
            "view_age": None if age == float("inf") else round(age, 3),
            "locally_open": reg.locally_open(),
            # this process's in-memory view, the one its request path reads
            "view": {k: v.state for k, v in reg.view().items()},
        })

    @app.post("/admin/breakers/<path:key>")
    def act_breaker(key: str) -> Response:
        check_token()
        errors = []
        try:
            check_key(key)
        except InvalidBreakerKey as exc:
            errors.append(f"key: {exc}")
        body = request.get_json(silent=True, force=True)
        if not isinstance(body, dict):
            raise AdminError(
                400, "body: expected a JSON object like {\"action\": \"force_open\"}; "
                     f"actions: {', '.join(_ADMIN_ACTIONS)}")
        action = body.get("action")
        if action is None:
            errors.append(f"action: missing; one of {', '.join(_ADMIN_ACTIONS)}")
        elif action not in _ADMIN_ACTIONS:
            errors.append(f"action: {action!r} is not one of {', '.join(_ADMIN_ACTIONS)}")
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            errors.append("reason: must be a string of at most 500 characters")
        unknown = sorted(set(body) - {"action", "reason"})
        if unknown:
            errors.append(f"unknown fields: {', '.join(unknown)}")
        if errors:
            raise AdminError(400, "; ".join(errors))
        reg = registry()
        try:
            t = reg.act(key, str(action), reason or f"operator: {action}")
        except BreakerUnavailable:
            raise
        except BreakerError as exc:
            raise AdminError(400, str(exc)) from exc
        st = reg.store.status(key)
        return jsonify({
            "key": key,
            "action": action,
            "changed": t is not None,
            "transition": None if t is None else {
                "old": t.old, "new": t.new, "generation": t.generation, "reason": t.reason,
            },
            "status": st.to_json(),
        })

    flask_wsgi = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith("/v1/"):
            return gw(environ, start_response)
        return flask_wsgi(environ, start_response)

    app.wsgi_app = wsgi  # type: ignore[method-assign]
    return app

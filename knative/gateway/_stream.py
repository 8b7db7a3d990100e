"""Streamed answers (SSE) passed through event by event, never buffered whole.

The first event is read inside the try (:func:`read_first_events`), so a stream that dies
before it can still be retried elsewhere: no byte has gone to the client yet. After that the
:class:`Stream` hands the client whole events as they come; an upstream that breaks, stalls
(``stream_idle_timeout``) or outlives the deadline ends the stream with an SSE error event and
no ``[DONE]``, never a hang. When the stream ends, however it ends, it settles its try once:
the breakers' results, the pooled connection and the in-flight counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from knative.breakers import Permit
from knative.gateway._exchange import ProxyRequest
from knative.gateway._guard import BreakerGuard
from knative.gateway._inflight import InFlight
from knative.gateway._metrics import GatewayMetrics
from knative.gateway._settings import GatewaySettings
from knative.gateway._upstream import Lease, NoFirstByte, UpstreamError, UpstreamPool
from knative.gateway._upstream import Response as UpstreamResponse
from knative.gateway._wire import sse_error

MAX_EVENT = 1 << 20  # an SSE event larger than this is passed on without waiting for its end


class Liveness:
    """When each replica last sent a stream event, on any try: a replica busy streaming to
    others is alive even while a try waits for its first event."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def seen(self, url: str, at: float) -> None:
        self._last[url] = at  # one store: atomic, no lock on the stream's path

    def last(self, url: str) -> float:
        return self._last.get(url, float("-inf"))


@dataclass(frozen=True)
class StreamContext:
    """What every stream of one gateway reports to: one per gateway."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    inflight: InFlight
    guard: BreakerGuard
    pool: UpstreamPool
    live: Liveness | None = None


@dataclass(frozen=True)
class StreamSource:
    """The try a stream reads from, and what its end settles."""

    lease: Lease
    resp: UpstreamResponse
    permits: list[Permit]
    url: str
    ttfb: float  # seconds from the try's start to its first event (the try's breakers)
    rev_ttfb: float  # seconds from the revision's permit to the first event (its breaker)
    revision: str = ""


def read_first_events(resp: UpstreamResponse, deadline: float,
                      stall: float | None = None) -> tuple[bytes, bytes]:
    """Read up to the end of the first complete SSE event: a stream that dies before it can
    still be retried (no byte has gone to the client). Returns the whole events and the rest.
    With ``stall``, an upstream that sends nothing for that long after its head raises
    :class:`NoFirstByte` (a replica frozen between the two), not only the try's deadline."""
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("per-try timeout before the first event")
        if stall is None or stall >= remaining:
            chunk = resp.read_some(remaining)
        else:
            try:
                chunk = resp.read_some(stall)
            except TimeoutError:
                raise NoFirstByte(f"a head but no first event within {stall:.2f} s") from None
        if not chunk:
            return buf, b""
        buf += chunk
        cut = buf.rfind(b"\n\n")
        if cut >= 0:
            return buf[: cut + 2], buf[cut + 2:]
        if len(buf) >= MAX_EVENT:
            return buf, b""


class Stream:
    """A streamed answer as a WSGI iterable; the WSGI server calls ``close`` at the end."""

    def __init__(
        self, ctx: StreamContext, req: ProxyRequest, src: StreamSource, first: bytes,
        tail: bytes, headers: list[tuple[str, str]],
    ) -> None:
        self._ctx = ctx
        self._req = req
        self._src = src
        self._first = first
        self._tail = tail
        self.headers = [*headers, ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        self.done = False
        self._src_open = True  # the source's try is not settled yet

    def __iter__(self) -> Iterator[bytes]:
        if self._first:
            yield self._first
        while True:
            piece, last = self._step()
            if piece:
                yield piece
            if last:
                return

    def _step(self) -> tuple[bytes, bool]:
        """The next bytes for the client, and whether the stream has ended."""
        s = self._ctx.settings
        idle = s.stream_idle_timeout
        remaining = self._req.deadline - time.monotonic()
        if remaining <= 0:
            return self._deadline_exceeded(), True
        resp = self._src.resp
        try:
            data = resp.read_some(min(idle, remaining))
        except TimeoutError:
            if remaining < idle:
                return self._deadline_exceeded(), True
            return self._fail("stream_stalled", 504, "upstream_timeout",
                              f"the upstream sent nothing for {idle:.1f} s"), True
        except (OSError, UpstreamError, ValueError):
            return self._fail("stream_broken", 502, "upstream_connection_error",
                              "the upstream closed the stream before it finished"), True
        if not data:
            tail, self._tail = self._tail, b""
            self._finish(True, resp.reusable)
            return tail, True
        return self._events(data), False

    def _events(self, data: bytes) -> bytes:
        """The whole events so far (``b""`` while the first is incomplete); keeps the rest."""
        buf = self._tail + data if self._tail else data
        cut = buf.rfind(b"\n\n")
        if cut < 0 and len(buf) < MAX_EVENT:
            self._tail = buf
            return b""
        if cut < 0:
            cut = len(buf) - 2
        self._tail = buf[cut + 2:]
        if self._ctx.live is not None:
            self._ctx.live.seen(self._src.url, time.monotonic())
        return buf[: cut + 2]

    def _deadline_exceeded(self) -> bytes:
        return self._fail("stream_deadline", 504, "deadline_exceeded",
                          f"the stream did not finish within the "
                          f"{self._ctx.settings.deadline} s deadline")

    def _fail(self, event: str, status: int, kind: str, message: str) -> bytes:
        self._finish(False, False)
        self._ctx.metrics.inc(event)
        return sse_error(status, kind, message)

    def _finish(self, ok: bool, reusable: bool) -> None:
        if self.done:
            return
        self.done = True
        self.settle_source(ok, reusable)
        self._ctx.guard.settle(self._req, ok, self._src.rev_ttfb)
        self._ctx.inflight.end(self._req.ticket)

    def settle_source(self, ok: bool, reusable: bool = False) -> None:
        """End the try this stream reads from: its breakers' result, its connection."""
        if not self._src_open:
            return
        self._src_open = False
        ctx, src = self._ctx, self._src
        ctx.guard.record(src.permits, ok, src.ttfb)
        ctx.pool.release(src.lease, reusable)
        ctx.inflight.try_ended(src.url)

    @property
    def first_wait(self) -> float:
        """Seconds from the start of the try this stream reads from to its first event."""
        return self._src.ttfb

    def handoff(self) -> tuple[StreamSource, bytes, bytes]:
        """This stream's try, first events and the rest read, for another stream to go on
        with (this one is dropped unsettled: the taker settles the try)."""
        self.done = True
        return self._src, self._first, self._tail

    def adopt(self, src: StreamSource, tail: bytes) -> None:
        """Read from ``src`` from now on (the previous try is settled)."""
        self._src = src
        self._tail = tail
        self._src_open = True

    def close(self) -> None:
        # Finished, or the client went away mid-stream (not the upstream's fault).
        self._finish(True, False)

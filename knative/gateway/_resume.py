"""Streams that outlive their replica: a broken or stalled generation continues elsewhere.

A replica can be killed (no drain, the socket reset) or frozen (the socket open, nothing
coming) in the middle of a stream. For a streamed completion or chat the gateway asks the
replica, with the internal token, to say in each event the token ids it adds and how many
characters of text went out so far (a last field of the event, stripped here before the
client sees it). When the stream breaks (reset, end, error event before its finish) or stalls
(no event for a multiple of that replica's usual gap between events, within a floor and a
ceiling), the gateway sends the same request, plus those ids, to another ready replica (the
same revision first, then the other revisions, then the fallback), and passes on its events
as the rest of the one stream: the replica keeps the stream's id and creation time, sends no
second role chunk, and counts the resumed tokens in its usage. The broken replica's breakers
record a failure. Past the limits (resumes per request, the deadline) the stream ends with the
SSE error event as before.

A replica can also freeze or die before its first event. A try that gets no first byte within
the first-event timeout (:class:`Firsts`: a multiple of the replica's usual time to its first
event, within a floor and a ceiling, counted from its last event to anyone) fails like a stall,
and the request goes to another replica before anything reached the client. A non-streamed
single generation is asked for as an internal stream (:func:`prepare`), so it is resumed the
same way; its answer is assembled by :mod:`knative.gateway._assemble`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from knative.gateway._exchange import Failure, ProxyRequest
from knative.gateway._routing import Endpoint
from knative.gateway._settings import GatewaySettings
from knative.gateway._stream import Liveness, Stream, StreamContext, StreamSource
from knative.gateway._upstream import HeadWait, NoFirstByte, UpstreamError, answers

INTERNAL_HEADER = "x-surefoot-internal"
RESUME_FIELD = "surefoot_resume"
_MARK = b',"' + RESUME_FIELD.encode() + b'":'
_PATHS = ("/v1/completions", "/v1/chat/completions")

# (host, port, seconds) -> whether the replica answers at all
Probe = Callable[[str, int, float], bool]
# (request, its resumed body, replicas already tried, revision of the broken one) -> a stream
Reopen = Callable[[ProxyRequest, bytes, set[str], str], "Stream | None"]


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _single(path: str, doc: dict[str, Any]) -> bool:
    """One choice the replica can report token by token: no logprobs or tools (a format's
    grammar goes on past the resumed tokens on the replica)."""
    if RESUME_FIELD in doc or doc.get("n") not in (None, 1) or doc.get("logprobs") not in (
            None, False):
        return False  # several choices, or logprobs: the replica generates them whole
    if path == "/v1/completions":
        p = doc.get("prompt")
        return (isinstance(p, str) or (isinstance(p, list) and len(p) == 1
                                       and isinstance(p[0], str))) and not doc.get("echo")
    tools = bool(doc.get("tools")) and doc.get("tool_choice") != "none"
    return not (tools or doc.get("top_logprobs"))


def resumable_body(path: str, body: bytes) -> bool:
    """Whether a request is a single streamed completion or chat the gateway can resume."""
    if path not in _PATHS or b'"stream"' not in body:
        return False
    doc = _document(body)
    return doc is not None and doc.get("stream") is True and _single(path, doc)


def prepare(req: ProxyRequest, token: str | None) -> None:
    """Mark what the gateway does with ``req``: a stream's first event is awaited within the
    first-event timeout; with ``token`` (the replicas' internal token) a single generation is
    resumable, and a non-streamed one is asked for as an internal stream (its body rewritten)
    whose answer the gateway assembles (:mod:`knative.gateway._assemble`)."""
    if req.method != "POST" or req.path not in _PATHS or (
            not token and b'"stream"' not in req.body):
        return
    doc = _document(req.body)
    if doc is None:
        return
    stream = doc.get("stream")
    req.first_event = stream is True
    if not token or not _single(req.path, doc):
        return
    if stream is not True:
        if stream not in (None, False) or "stream_options" in doc:
            return  # the replica says what is wrong with it
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
        req.body = json.dumps(doc, separators=(",", ":")).encode()
        req.assemble = req.first_event = True
    req.resumable = True
    req.headers[INTERNAL_HEADER] = token


class Firsts:
    """Each replica's usual time from a try's start to its first event, the base of its
    first-event timeout. Kept per try in progress on the replica when the try began (a replica
    that runs its requests one after another starts the k-th after the k before it), so a
    busy replica is given longer; a replica not seen yet gets the average over all. The
    timeout counts from the try's start or the replica's last event on any other try,
    whichever is later: a replica that streams to others while this try waits in its queue is
    alive, a frozen one sends nothing to anyone. When it runs out the replica is asked, on a
    connection of its own, whether it answers at all (``probe``, within the timeout's floor):
    one that does is busy (a long prefill, a queue), not frozen, and the try waits on."""

    ALPHA = 0.2

    def __init__(self, live: Liveness | None = None,
                 clock: Callable[[], float] = time.monotonic, probe: Probe = answers) -> None:
        self._live = live or Liveness()
        self._clock = clock
        self._probe = probe
        self._per: dict[str, float] = {}
        self._all: float | None = None
        self._lock = threading.Lock()

    def observe(self, url: str, seconds: float, ahead: int) -> None:
        per = seconds / (1 + max(0, ahead))
        a = self.ALPHA
        with self._lock:
            old = self._per.get(url)
            self._per[url] = per if old is None else old + a * (per - old)
            self._all = per if self._all is None else self._all + a * (per - self._all)

    def timeout(self, url: str, ahead: int, s: GatewaySettings) -> float:
        usual = self._per.get(url, self._all)
        if usual is None:
            return s.first_event_timeout_max
        wait = s.first_event_factor * usual * (1 + max(0, ahead))
        return min(s.first_event_timeout_max, max(s.first_event_timeout_min, wait))

    def waiter(self, req: ProxyRequest, ep: Endpoint, ahead: int, t0: float,
               try_deadline: float, s: GatewaySettings) -> HeadWait | None:
        """How a try of ``req`` begun at ``t0`` waits for its first byte (a replica sends its
        stream's head with the first event); None for an answer read whole (the try timeout
        bounds it)."""
        if not req.first_event:
            return None
        url = ep.url
        timeout = self.timeout(url, ahead, s)
        live, clock, probe = self._live, self._clock, self._probe

        def wait(readable: Callable[[float], bool]) -> None:
            answered = t0
            while True:
                now = clock()
                if now >= try_deadline:
                    raise TimeoutError("per-try timeout before the first byte")
                give_up = max(answered, live.last(url)) + timeout
                if now >= give_up:
                    if not probe(ep.host, ep.port, min(s.first_event_timeout_min,
                                                       try_deadline - now)):
                        raise NoFirstByte(f"no first byte within {timeout:.2f} s, and no "
                                          "answer to a health check")
                    answered = clock()  # alive, only busy: wait on
                    continue
                if readable(min(give_up, try_deadline) - now):
                    return

        return wait


def first_event_missed(revision: str, replica: str, exc: Exception) -> Failure:
    """The failure of a try that sent no first event in time: nothing went to the client, so
    the request goes on to another replica."""
    return Failure(504, "first_event_timeout", f"{revision} replica {replica}: {exc}",
                   retryable=True)


class Gaps:
    """Each replica's usual gap between two events (a moving average), the base of its stall
    timeout; a replica not seen yet gets the average over all."""

    ALPHA = 0.1

    def __init__(self) -> None:
        self._gap: dict[str, float] = {}
        self._all: float | None = None
        self._lock = threading.Lock()

    def observe(self, url: str, gap: float) -> None:
        a = self.ALPHA
        with self._lock:
            old = self._gap.get(url)
            self._gap[url] = gap if old is None else old + a * (gap - old)
            self._all = gap if self._all is None else self._all + a * (gap - self._all)

    def stall_timeout(self, url: str, own_max: float, s: GatewaySettings) -> float:
        usual = self._gap.get(url, self._all)
        if usual is None:
            return s.stall_timeout_max
        base = max(usual, own_max / 2)
        return min(s.stall_timeout_max, max(s.stall_timeout_min, s.stall_gap_factor * base))


class Tracker:
    """What the client has of one stream: the token ids and characters sent, its id and
    creation time, whether its finish, ``[DONE]`` or an error event came."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.chars = 0
        self.rid: str | None = None
        self.created: int | None = None
        self.finished = False  # a finish_reason went to the client
        self.done = False  # [DONE] went to the client
        self.failed = False  # the upstream sent an error event (not passed on)

    def take(self, events: bytes) -> bytes:
        """The whole ``events`` as the client gets them, the internal field stripped."""
        out = []
        for ev in events.split(b"\n\n"):
            if not ev or self.done or self.failed:
                continue
            if ev.startswith(b"data: [DONE]"):
                self.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            if ev.startswith(b'data: {"error"'):
                self.failed = True
                continue
            i = ev.rfind(_MARK)
            if i >= 0:
                field = json.loads(ev[i + len(_MARK):-1])
                self.ids.extend(field["t"])
                self.chars = field["c"]
                ev = ev[:i] + b"}"
            if self.rid is None and ev.startswith(b"data: {"):
                self._identify(ev)
            if b'"finish_reason":"' in ev:
                self.finished = True
            out.append(ev + b"\n\n")
        return b"".join(out)

    def _identify(self, ev: bytes) -> None:
        try:
            doc = json.loads(ev[6:])
        except ValueError:
            return
        if isinstance(doc, dict):
            self.rid = str(doc.get("id") or "")
            created = doc.get("created")
            self.created = created if isinstance(created, int) else 0

    def resume_body(self, body: bytes) -> bytes:
        doc = json.loads(body)
        doc[RESUME_FIELD] = {"tokens": self.ids, "chars": self.chars, "id": self.rid or "",
                             "created": self.created or 0}
        return json.dumps(doc, separators=(",", ":")).encode()


class ResumableStream(Stream):
    """A :class:`Stream` that continues on another replica when its upstream breaks or
    stalls (``reopen`` finds one; None when no replica can take it)."""

    def __init__(self, ctx: StreamContext, req: ProxyRequest, src: StreamSource, first: bytes,
                 tail: bytes, headers: list[tuple[str, str]], gaps: Gaps,
                 reopen: Reopen | None) -> None:
        super().__init__(ctx, req, src, first, tail, headers)
        self._track = Tracker()
        self._gaps = gaps
        self._reopen = reopen
        self._resumes = 0
        self._tried = {src.url}
        self._last = time.monotonic()
        self._max_gap = 0.0

    def __iter__(self) -> Iterator[bytes]:
        out = self._track.take(self._first)
        self._first = b""
        while True:
            if out:
                self._last = time.monotonic()
                yield out
            if self._track.done:
                self._drain()
                return
            if self._track.failed:
                out, last = self._resume("broken")
            else:
                out, last = self._read()
            if last:
                if out:
                    yield out
                return

    def _read(self) -> tuple[bytes, bool]:
        """The next events for the client, and whether the stream has ended."""
        remaining = self._req.deadline - time.monotonic()
        if remaining <= 0:
            return self._deadline_exceeded(), True
        src = self._src
        stall = self._gaps.stall_timeout(src.url, self._max_gap, self._ctx.settings)
        try:
            data = src.resp.read_some(min(stall, remaining))
        except TimeoutError:
            if remaining <= stall:
                return self._deadline_exceeded(), True
            return self._resume("stalled")
        except (OSError, UpstreamError, ValueError):  # reset, broken chunk: the replica is gone
            return self._resume("broken")
        if not data:
            return self._resume("broken")
        events = self._events(data)
        if events:
            gap = time.monotonic() - self._last
            self._max_gap = max(self._max_gap, gap)
            self._gaps.observe(src.url, gap)
        return self._track.take(events), False

    def _drain(self) -> None:
        """After ``[DONE]``: read the body's end so the connection can be reused."""
        resp = self._src.resp
        try:
            rest = resp.read_some(min(1.0, max(0.01, self._req.deadline - time.monotonic())))
        except (OSError, UpstreamError, ValueError):
            rest = b"?"
        self._finish(True, not rest and resp.reusable)

    def _resume(self, cause: str) -> tuple[bytes, bool]:
        """Continue on another replica; the events it sends first, or the error event."""
        ctx, track = self._ctx, self._track
        if track.finished:  # everything but [DONE] went out: finish it here
            self._finish(True, False)
            return b"data: [DONE]\n\n", True
        status, kind = (504, "upstream_timeout") if cause == "stalled" else (
            502, "upstream_connection_error")
        message = ("the upstream sent nothing for too long" if cause == "stalled"
                   else "the upstream closed the stream before it finished")
        s = ctx.settings
        if (self._reopen is None or self._resumes >= s.max_resumes
                or time.monotonic() >= self._req.deadline or track.rid is None):
            return self._fail(f"stream_{cause}", status, kind, message), True
        self.settle_source(False)
        broken_at = self._last
        new = self._reopen(self._req, track.resume_body(self._req.body), self._tried,
                           self._src.revision)
        if new is None:
            ctx.metrics.inc("resume_failed")
            return self._fail(f"stream_{cause}", status, kind, message + "; no replica could "
                              "continue it"), True
        self._resumes += 1
        ctx.metrics.resumed(cause, len(track.ids))
        src, first, tail = new.handoff()
        self.adopt(src, tail)
        self._tried.add(src.url)
        self._max_gap = 0.0
        ctx.metrics.observe_resume_pause(time.monotonic() - broken_at)
        return track.take(first), False


def make_stream(ctx: StreamContext, req: ProxyRequest, src: StreamSource, first: bytes,
                tail: bytes, headers: list[tuple[str, str]], gaps: Gaps,
                reopen: Reopen | None) -> Any:
    """The stream object for a try's answer: resumable when the request is."""
    if req.resumable:
        return ResumableStream(ctx, req, src, first, tail, headers, gaps, reopen)
    return Stream(ctx, req, src, first, tail, headers)

"""Streamed generations as OpenAI server-sent events.

A stream holds its request's admission ticket until the last event is sent or the client goes
away, whichever comes first. The first token is generated before the response starts, so an
error before it (a context overflow, a busy engine) is still an HTTP status, not a broken
stream; an error after it ends the stream with an error event.

A stream for the gateway (it carries the replica's internal token) also says, in each event, the
completion token ids that event adds and the characters of completion text sent so far, as one
last field (``"surefoot_resume":{"t":[...],"c":N}``) that the gateway strips before the client
sees the event; given those, another replica continues the stream
(:mod:`knative.serving._continuation`) with the same id and creation time, no second role chunk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response

from knative.serving import _openai as oa
from knative.serving._admission import Ticket
from knative.serving._backends import BackendError, Delta
from knative.serving._liveness import ClientGone
from knative.serving._runtime import Metrics

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"

Run = Callable[[Any], Iterator[Delta]]  # one input (a prompt, a message list) -> its deltas
# a choice's index -> what turns each of its deltas into that chunk's ``logprobs`` (or None)
Formatter = Callable[[int], Callable[[Delta], Any]]


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_resumable(obj: Any, tokens: list[int], chars: int) -> bytes:
    """An event with the internal field last, where the gateway finds and strips it."""
    body = json.dumps(obj, separators=(",", ":"))
    ids = ",".join(map(str, tokens))
    return f'data: {body[:-1]},"{oa.RESUME_FIELD}":{{"t":[{ids}],"c":{chars}}}}}\n\n'.encode()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


@dataclass(frozen=True)
class StreamKind:
    """The shape of a stream's chunks: completions' text or chat's deltas."""

    obj: str
    id_prefix: str
    chat: bool


COMPLETION = StreamKind("text_completion", "cmpl", chat=False)
CHAT = StreamKind("chat.completion.chunk", "chatcmpl", chat=True)


@dataclass(frozen=True)
class Shape:
    """How a stream's choices come out: what ``formatter`` makes of each delta's logprobs
    (none without one), and whether the choices are generated side by side (``interleave``)
    or one after another."""

    formatter: Formatter | None = None
    interleave: bool = False


class _Chunks:
    """The chunks of one stream (one id, one creation time)."""

    def __init__(self, kind: StreamKind, model: str, resume: oa.Resume | None = None) -> None:
        self.kind = kind
        self.model = model
        self.rid = resume.id if resume else oa.new_id(kind.id_prefix)
        self.created = resume.created if resume else oa.now()
        self.fingerprint = oa.fingerprint(model)
        self.null_usage = False  # chat chunks before the usage chunk say ``usage: null``

    def envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"id": self.rid, "object": self.kind.obj, "created": self.created,
               "model": self.model, "system_fingerprint": self.fingerprint,
               "choices": choices}
        if self.null_usage:
            out["usage"] = None
        return out

    def choice(self, index: int, text: str | None, finish: str | None, role: bool = False,
               logprobs: Any = None, tool_calls: Any = None) -> dict[str, Any]:
        if not self.kind.chat:
            return self.envelope([{"index": index, "text": text or "", "logprobs": logprobs,
                                   "finish_reason": finish}])
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
        return self.envelope([{"index": index, "delta": delta, "logprobs": logprobs,
                               "finish_reason": finish}])

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {**self.envelope([]), "usage": usage(prompt, completion)}


class _Stream:
    """One streamed request: its inputs run one after another, each as one choice."""

    def __init__(self, metrics: Metrics, ticket: Ticket, chunks: _Chunks,
                 inputs: tuple[Any, ...], run: Run, include_usage: bool,
                 resumable: Resumable | None = None, shape: Shape | None = None) -> None:
        self.metrics = metrics
        self.ticket = ticket
        self.chunks = chunks
        self.inputs = inputs
        self.run = run
        self.include_usage = include_usage
        chunks.null_usage = include_usage and chunks.kind.chat
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.resumable = resumable
        shape = shape or Shape()
        self.formatter = shape.formatter
        self.interleave = shape.interleave and len(inputs) > 1
        self._ids: list[int] = []  # token ids not yet reported (resumable streams)

    def _sse(self, obj: Any) -> bytes:
        r = self.resumable
        if r is None:
            return sse(obj)
        ids, self._ids = self._ids, []
        return sse_resumable(obj, ids, r.chars)

    def _took(self, delta: Delta) -> None:
        r = self.resumable
        if r is not None:
            self._ids.extend(delta.tokens)
            r.chars += len(delta.text)

    def open(self) -> Response:
        """Generate the first delta, then hand the rest to the response."""
        start = time.perf_counter()
        try:
            self.ticket.start()
            first_iter = self.run(self.inputs[0])
            first = next(first_iter, None)
        except BaseException:
            self.ticket.release()
            raise
        self.metrics.ttft.observe(time.perf_counter() - start)
        resp = Response(self.events(first_iter, first), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.call_on_close(self.ticket.release)
        return resp

    def events(self, first_iter: Iterator[Delta], first: Delta | None) -> Iterator[bytes]:
        try:
            if self.interleave:
                yield from self._interleaved(first_iter, first)
            for index, item in enumerate(() if self.interleave else self.inputs):
                it = first_iter if index == 0 else self.run(item)
                pending = first if index == 0 else next(it, None)
                yield from self._choice(index, it, pending)
            if self.include_usage:
                yield self._sse(self.chunks.usage(self.prompt_tokens, self.completion_tokens))
            yield DONE
        except ClientGone:  # nobody left to tell
            log.debug("client hung up mid-stream")
        except (BackendError, ValueError) as exc:
            log.exception("generation failed mid-stream")
            yield sse(oa.error_body(f"generation failed: {exc}", "server_error"))
        finally:
            self.metrics.tokens.labels(self.chunks.model).inc(self.completion_tokens)
            self.ticket.release()

    def _interleaved(self, first_iter: Iterator[Delta], first: Delta | None) -> Iterator[bytes]:
        from knative.serving._interleave import merged

        fmts: dict[int, Callable[[Delta], Any] | None] = {}
        deltas = merged(self.run, self.inputs, first_iter, first)
        try:
            for index, delta in deltas:
                if index not in fmts:
                    fmts[index] = self.formatter(index) if self.formatter is not None else None
                    if self.chunks.kind.chat:
                        yield self._sse(self.chunks.choice(index, "", None, role=True))
                if delta is not None:
                    yield from self._delta(index, delta, fmts[index])
        finally:
            deltas.close()

    def _choice(self, index: int, it: Iterator[Delta], pending: Delta | None) -> Iterator[bytes]:
        chat = self.chunks.kind.chat
        fmt = self.formatter(index) if self.formatter is not None else None
        if chat and not (self.resumable and self.resumable.resumed):
            yield self._sse(self.chunks.choice(index, "", None, role=True))
        while pending is not None:
            yield from self._delta(index, pending, fmt)
            pending = next(it, None)

    def _delta(self, index: int, d: Delta,
               fmt: Callable[[Delta], Any] | None) -> Iterator[bytes]:
        """The chunks of one delta of choice ``index``: its text (with its logprobs) or its
        tool calls, then its finish."""
        chat = self.chunks.kind.chat
        if d.usage:
            self.prompt_tokens += d.usage[0]
            self.completion_tokens += d.usage[1]
        self._took(d)
        lp = fmt(d) if fmt is not None else None
        if d.tool_calls:
            yield self._sse(self.chunks.choice(index, None, None, tool_calls=d.tool_calls))
        elif d.text or not chat or d.logprobs:
            yield self._sse(self.chunks.choice(index, d.text, None, logprobs=lp))
        if d.finish_reason:
            yield self._sse(self.chunks.choice(index, None if chat else "", d.finish_reason))


class Resumable:
    """What a resumable stream reports: characters of completion text sent so far (those of
    the resumed part first), and whether it continues another replica's stream."""

    def __init__(self, resume: oa.Resume | None) -> None:
        self.resumed = resume is not None
        self.chars = resume.chars if resume else 0


def stream_response(metrics: Metrics, ticket: Ticket, kind: StreamKind, model: str,
                    inputs: tuple[Any, ...], run: Run, include_usage: bool,
                    resumable: bool = False, resume: oa.Resume | None = None,
                    shape: Shape | None = None) -> Response:
    """The event-stream response of one admitted request; it owns ``ticket`` from here.
    A ``resumable`` one (the gateway's) reports its token ids and may continue ``resume``;
    each input is one choice, shaped by ``shape``."""
    r = Resumable(resume) if resumable else None
    return _Stream(metrics, ticket, _Chunks(kind, model, resume), inputs, run, include_usage,
                   r, shape).open()

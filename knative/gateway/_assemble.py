"""Non-streamed completions and chats the gateway reads as streams, so they can be resumed.

A plain (non-streamed) answer is only sent by the replica when the whole generation is done;
if the replica dies or freezes half-way, everything it generated is lost with it. So, for a
single generation it can resume (one choice, no logprobs or tools), the gateway
asks the replica for its internal stream instead (:func:`knative.gateway._resume.prepare`),
resumes that stream on another replica like any other when it breaks or stalls, and builds from
its events the answer the client asked for: the OpenAI ``text_completion`` or
``chat.completion`` object a replica sends, with the stream's id and creation time and its
usage (the prompt and every completion token, the resumed ones included). A stream that cannot
be finished is answered with the error its last event carries, as an HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

from knative.gateway._exchange import Failure, ProxyRequest, Reply
from knative.gateway._stream import Stream

_STREAM_ONLY = frozenset({"content-type", "cache-control", "x-accel-buffering"})


class Answer:
    """What the events of one stream add up to."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.text: list[str] = []
        self.finish: str | None = None
        self.usage: Any = None
        self.done = False
        self.error: dict[str, Any] | None = None

    def add(self, data: bytes) -> None:
        """One event's data (after ``data: ``)."""
        if data == b"[DONE]":
            self.done = True
            return
        doc = json.loads(data)
        if "error" in doc:
            self.error = doc["error"] if isinstance(doc["error"], dict) else {}
            return
        if not self.head:
            self.head = {k: doc.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if doc.get("usage") is not None:
            self.usage = doc["usage"]
        for choice in doc.get("choices") or ():
            piece = choice.get("delta", {}).get("content") if self.chat else choice.get("text")
            if piece:
                self.text.append(piece)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def body(self) -> dict[str, Any]:
        text = "".join(self.text)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0, "finish_reason": self.finish, "logprobs": None,
                "message": {"role": "assistant", "content": text, "refusal": None}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish}
        obj = "chat.completion" if self.chat else "text_completion"
        out = {**self.head, "object": obj, "choices": [choice]}
        if self.usage is not None:  # a replica always sends it (the gateway asks for it)
            out["usage"] = self.usage
        return out


def read_events(stream: Stream, answer: Answer) -> None:
    """Everything ``stream`` sends, into ``answer``; the stream is closed at the end."""
    rest = b""
    try:
        for piece in stream:
            rest += piece
            *events, rest = rest.split(b"\n\n")
            for ev in events:
                if ev.startswith(b"data: "):
                    answer.add(ev[6:])
    finally:
        stream.close()


def assemble(stream: Stream, req: ProxyRequest) -> Reply | Failure:
    """The plain answer to ``req`` (sent upstream as a stream) from ``stream``'s events."""
    answer = Answer(chat=req.path.startswith("/v1/chat/"))
    try:
        read_events(stream, answer)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Failure(502, "upstream_bad_stream", f"the upstream stream could not be read "
                       f"({type(exc).__name__} {exc})", retryable=False)
    err = answer.error
    if err is not None:
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        return Failure(status, str(err.get("type") or "upstream_error"),
                       str(err.get("message") or "the generation failed"), retryable=False)
    if not answer.done:
        return Failure(502, "upstream_connection_error",
                       "the upstream ended the generation before it finished", retryable=False)
    body = json.dumps(answer.body(), separators=(",", ":"), sort_keys=True).encode() + b"\n"
    headers = [(k, v) for k, v in stream.headers if k.lower() not in _STREAM_ONLY]
    headers.append(("Content-Type", "application/json"))
    return Reply(200, headers, body)

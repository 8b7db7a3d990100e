"""A stand-in for a serving replica that can be told to misbehave, over real HTTP.

The gateway's tests and benchmarks need an upstream that answers in microseconds, or hangs,
dies in the middle of a stream, refuses connections, answers 503 with Retry-After, and so on.
This is a small HTTP/1.1 server on asyncio (keep-alive, Content-Length bodies), run on a
background thread (:class:`StubUpstream`) or as its own process (``python -m
tests.knative.stub_upstream --port N``, for benchmarks that must not share a GIL with it).

Behaviour is the ``mode`` attribute (or the ``x-stub-mode`` request header); ``delay`` (or the
``x-stub-delay-ms`` header) holds every answer back that long, like a model's service time:

- ``ok``: the OpenAI-shaped answer; ``stream: true`` in the body gives SSE events + ``[DONE]``
- ``hang``: read the request, never answer
- ``die_mid_stream``: send the stream's headers and ``die_after`` events, then reset the socket
- ``stall_mid_stream``: send the stream's headers and ``die_after`` events, then nothing
- ``die_before_response``: close the connection as soon as the request is read
- ``503``, ``502``, ``500``, ``400``, ``429``: that status with a JSON error (503 with
  Retry-After)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


class _Proto(asyncio.Protocol):
    def __init__(self, stub: StubUpstream) -> None:
        self.stub = stub
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stub.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4 : end + 4 + n]
            self.buf = self.buf[end + 4 + n :]
            method, path, _ = [*lines[0].split(" "), "", ""][:3]
            self.stub._handle(self, method, path, headers, body)


class StubUpstream:
    """An upstream on 127.0.0.1:``port`` (0: a free one) served from a background thread."""

    def __init__(self, port: int = 0, name: str = "stub", delay: float = 0.0) -> None:
        self.name = name
        self.mode = "ok"
        self.delay = delay  # seconds before answering (a model's service time)
        self.stream_events = 3
        self.stream_gap = 0.0
        self.die_after = 1
        self.requests = 0
        self.connections = 0
        # (arrival time.time(), x-surefoot-gateway, x-surefoot-sent-at or 0.0)
        self.arrivals: list[tuple[float, str, float]] = []
        self.record_arrivals = False
        self.bodies: list[bytes] = []
        self.record_bodies = False
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name=f"stub-{name}", daemon=True)
        self._ready = threading.Event()
        self._protos: set[_Proto] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        def factory() -> _Proto:
            return _Proto(self)

        self._server = self._loop.run_until_complete(
            self._loop.create_server(factory, "127.0.0.1", self._port, reuse_address=True)
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Let the aborts scheduled by stop() run (they close the sockets), then end the tasks.
        self._loop.run_until_complete(asyncio.sleep(0.01))
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    def start(self) -> StubUpstream:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("stub upstream did not start")
        return self

    @property
    def port(self) -> int:
        return int(self._port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop listening and reset every open connection (a process that died)."""

        def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for p in list(self._protos):
                if p.transport is not None:
                    _reset(p.transport)
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(_stop)
            self._thread.join(5)

    def __enter__(self) -> StubUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour ------------------------------------------------------------------------------

    def _handle(self, proto: _Proto, method: str, path: str, headers: dict[str, str],
                body: bytes) -> None:
        self.requests += 1
        if self.record_arrivals:
            self.arrivals.append((time.time(), headers.get("x-surefoot-gateway", ""),
                                  float(headers.get("x-surefoot-sent-at", "0") or 0)))
        if self.record_bodies:
            self.bodies.append(body)
        mode = headers.get("x-stub-mode") or self.mode
        hdr_delay = headers.get("x-stub-delay-ms")
        delay = float(hdr_delay) / 1000.0 if hdr_delay else self.delay
        t = proto.transport
        assert t is not None
        self._protos.add(proto)
        if mode == "hang":
            return
        if mode == "die_before_response":
            _reset(t)
            return
        if mode.isdigit():
            status = int(mode)
            payload = json.dumps({"error": {"message": f"stub says {status}", "code": status,
                                            "type": "stub"}}).encode()
            extra = "Retry-After: 1\r\n" if status == 503 else ""
            self._later(t, _response(status, payload, extra), delay)
            return
        if path == "/v1/models":
            payload = json.dumps({"object": "list", "data": [{"id": self.name,
                                                               "object": "model"}]}).encode()
            self._later(t, _response(200, payload), delay)
            return
        stream = b'"stream": true' in body or b'"stream":true' in body
        if stream:
            self._stream(t, mode, delay)
            return
        payload = json.dumps({
            "id": "cmpl-stub", "object": "text_completion", "model": self.name,
            "choices": [{"index": 0, "text": f"hello from {self.name}", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }).encode()
        self._later(t, _response(200, payload, f"X-Stub: {self.name}\r\n"), delay)

    def _later(self, t: asyncio.Transport, data: bytes, delay: float) -> None:
        if delay > 0:
            self._loop.call_later(delay, _write, t, data)
        else:
            t.write(data)

    def _stream(self, t: asyncio.Transport, mode: str, delay: float) -> None:
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n")
        events = [
            ("data: " + json.dumps({"id": "cmpl-stub", "object": "text_completion",
                                    "model": self.name,
                                    "choices": [{"index": 0, "text": f"t{i} ",
                                                 "finish_reason": None}]}) + "\n\n").encode()
            for i in range(self.stream_events)
        ] + [b"data: [DONE]\n\n"]
        if mode in ("die_mid_stream", "stall_mid_stream"):
            events = events[: self.die_after]
        gap = self.stream_gap

        async def send() -> None:
            if delay:
                await asyncio.sleep(delay)
            _write(t, head)
            for ev in events:
                if gap:
                    await asyncio.sleep(gap)
                _write(t, b"%x\r\n%s\r\n" % (len(ev), ev))
            if mode == "die_mid_stream":
                await asyncio.sleep(0.01)
                _reset(t)
            elif mode == "stall_mid_stream":
                await asyncio.sleep(3600)
            else:
                _write(t, b"0\r\n\r\n")

        self._loop.create_task(send())


def _response(status: int, payload: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}\r\n"
    ).encode() + payload


def _write(t: asyncio.Transport, data: bytes) -> None:
    if not t.is_closing():
        t.write(data)


def _reset(t: asyncio.Transport) -> None:
    """Close with RST, as a killed process's kernel would."""
    sock: Any = t.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t.abort()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="stub")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    stub = StubUpstream(args.port, args.name, args.delay_ms / 1000.0)
    stub.start()
    print(f"READY {stub.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()


if __name__ == "__main__":
    main()

"""The gateway's HTTP/1.1 client (knative.gateway._upstream) against real sockets.

A scripted upstream answers each request with bytes the test wrote, so framing cases a real
replica rarely produces can be checked: chunked bodies with trailers, interim 1xx responses,
responses with no body whatever their headers say, bodies ended by the close, broken status
lines, resets in the middle of a body. The same bytes read through ``http.client`` give the
reference answer for the well-formed cases.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from knative.gateway._upstream import (
    Connection,
    NoFirstByte,
    UpstreamClosed,
    UpstreamError,
    UpstreamPool,
    answers,
)

TIMEOUT = 5.0

Connect = Callable[[int], Connection]


@dataclass
class Scripted:
    """One scripted answer: ``raw`` is written as is; then the server waits for ``hold`` (if
    given) and keeps the connection (``keep``), closes it (``close``), resets it (``reset``)
    or leaves it open without answering anything more (``stall``)."""

    raw: bytes
    then: str = "keep"
    hold: threading.Event | None = None


class ScriptedUpstream:
    """A TCP server on 127.0.0.1 answering the n-th request (on any connection) with the
    n-th scripted answer; requests past the script get their connection closed."""

    def __init__(self, *script: Scripted) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def __enter__(self) -> ScriptedUpstream:
        t = threading.Thread(target=self._accept, name="scripted-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        for s in [self._listener, *self._socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(TIMEOUT)
        for s in [self._listener, *self._socks]:
            s.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read_request(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        length = 0
        for line in buf[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < end + length:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        return buf[: end + length], buf[end + length:]

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                got = self._read_request(sock, buf)
                if got is None:
                    return
                request, buf = got
                with self._lock:
                    self.requests.append(request)
                    step = self.script.pop(0) if self.script else None
                if step is None:
                    return
                sock.sendall(step.raw)
                if step.hold is not None:
                    step.hold.wait(TIMEOUT)
                if step.then == "stall":
                    self._stopped.wait(TIMEOUT)
                    return
                if step.then == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    return
                if step.then == "close":
                    sock.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            return


@pytest.fixture
def connect() -> Iterator[Connect]:
    conns: list[Connection] = []

    def _connect(port: int) -> Connection:
        c = Connection("127.0.0.1", port)
        c.connect(TIMEOUT)
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        c.close()


def fetch(conn: Connection, method: str = "GET", body: bytes = b"") -> tuple[int, bytes, bool]:
    """(status, body, reusable) of one request on ``conn``."""
    resp = conn.request(method, "/x", {"accept": "*/*"}, body, TIMEOUT)
    data = resp.read_all(time.monotonic() + TIMEOUT)
    return resp.status, data, resp.reusable


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# --- the wait for the first byte ---------------------------------------------------------------


def test_the_wait_for_the_first_byte_sees_it_come(connect: Connect) -> None:
    with ScriptedUpstream(Scripted(ok(b"late"))) as up:
        conn = connect(up.port)
        seen: list[bool] = []

        def wait(readable: Callable[[float], bool]) -> None:
            seen.append(readable(TIMEOUT))

        resp = conn.request("GET", "/x", {}, b"", TIMEOUT, wait)
        assert seen == [True]
        assert resp.read_all(time.monotonic() + TIMEOUT) == b"late"


def test_the_wait_for_the_first_byte_may_give_up(connect: Connect) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    try:
        conn = connect(listener.getsockname()[1])
        polls: list[bool] = []

        def wait(readable: Callable[[float], bool]) -> None:
            polls.append(readable(0))  # nothing there yet: no waiting in this test
            raise NoFirstByte("nothing came")

        with pytest.raises(NoFirstByte):
            conn.request("POST", "/x", {}, b"{}", TIMEOUT, wait)
        assert polls == [False]
        assert isinstance(NoFirstByte("x"), TimeoutError)
    finally:
        listener.close()


def test_the_health_check_of_a_waiting_try() -> None:
    with ScriptedUpstream(Scripted(b"HTTP/1.1 503 Service Unavailable\r\n"
                                   b"Content-Length: 0\r\n\r\n")) as up:
        assert answers("127.0.0.1", up.port, TIMEOUT)  # any status: the process is alive
        assert up.requests[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused at once
        assert not answers("127.0.0.1", port, TIMEOUT)


# --- framing ----------------------------------------------------------------------------------


def test_content_length_body_and_the_request_on_the_wire(connect: Connect) -> None:
    with ScriptedUpstream(Scripted(ok(b"hello"))) as up:
        conn = connect(up.port)
        assert fetch(conn, "POST", b'{"a": 1}') == (200, b"hello", True)
    req = up.requests[0]
    assert req.startswith(b"POST /x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{up.port}\r\n".encode() in req
    assert b"Content-Length: 8\r\n" in req
    assert req.endswith(b'\r\n\r\n{"a": 1}')


def test_chunked_body_with_trailers_and_extensions(connect: Connect) -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n")
    with ScriptedUpstream(Scripted(raw), Scripted(ok(b"next"))) as up:
        conn = connect(up.port)
        assert fetch(conn) == (200, b"hello world", True)
        # the trailers were read to their end: the next answer parses on the same connection
        assert fetch(conn) == (200, b"next", True)
        assert up.connections == 1


def test_read_some_gives_each_chunk_as_it_arrives(connect: Connect) -> None:
    rest = threading.Event()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with ScriptedUpstream(Scripted(head + b"7\r\ndata: 1\r\n", then="close", hold=rest)) as up:
        conn = connect(up.port)
        resp = conn.request("POST", "/v1/completions", {}, b"{}", TIMEOUT)
        assert resp.read_some(TIMEOUT) == b"data: 1"  # before the rest was even sent
        rest.set()
        with pytest.raises(UpstreamError):  # then the close, inside the chunked body
            resp.read_all(time.monotonic() + TIMEOUT)


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n",
    ],
)
def test_interim_responses_before_the_final_one(connect: Connect, interim: bytes) -> None:
    with ScriptedUpstream(Scripted(interim + ok(b"final", b"X-Final: yes\r\n"))) as up:
        conn = connect(up.port)
        resp = conn.request("POST", "/x", {}, b"body", TIMEOUT)
        assert resp.status == 200
        assert resp.headers == [("Content-Length", "5"), ("X-Final", "yes")]
        assert resp.read_all(time.monotonic() + TIMEOUT) == b"final"
        assert resp.reusable


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
)
def test_responses_without_a_body_whatever_their_headers_say(
    connect: Connect, method: str, raw: bytes
) -> None:
    with ScriptedUpstream(Scripted(raw), Scripted(ok(b"next"))) as up:
        conn = connect(up.port)
        t0 = time.monotonic()
        status, body, reusable = fetch(conn, method)
        assert time.monotonic() - t0 < 1.0  # no wait for a body that never comes
        assert (body, reusable) == (b"", True)
        assert status == int(raw.split()[1])
        assert fetch(conn) == (200, b"next", True)  # nothing of it was taken for a body
        assert up.connections == 1


def test_body_ended_by_the_close(connect: Connect) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, then the close"
    with ScriptedUpstream(Scripted(raw, then="close")) as up:
        conn = connect(up.port)
        assert fetch(conn) == (200, b"all of it, then the close", False)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_connection_that_will_close_is_not_reusable(connect: Connect, raw: bytes) -> None:
    with ScriptedUpstream(Scripted(raw, then="close")) as up:
        conn = connect(up.port)
        assert fetch(conn) == (200, b"ok", False)


def test_http_1_0_keep_alive_is_reusable(connect: Connect) -> None:
    raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    with ScriptedUpstream(Scripted(raw)) as up:
        conn = connect(up.port)
        assert fetch(conn) == (200, b"ok", True)


# --- broken upstreams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"garbage\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1\r\n",
        b"HTTP/1.1 abc OK\r\n",
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"HTTP/1.1 +20 OK\r\n",
        b"HTTP/1.1 200 " + b"x" * 70_000,
    ],
)
def test_bad_status_line_is_a_clear_error_not_a_hang(connect: Connect, line: bytes) -> None:
    # The upstream keeps the connection open after its bad line: the error must not wait on it.
    with ScriptedUpstream(Scripted(line, then="stall")) as up:
        conn = connect(up.port)
        t0 = time.monotonic()
        with pytest.raises(UpstreamError) as e:
            conn.request("GET", "/x", {}, b"", TIMEOUT)
        assert time.monotonic() - t0 < 1.0
        assert "status line" in str(e.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    ],
)
def test_bad_head_is_a_clear_error(connect: Connect, raw: bytes, fragment: str) -> None:
    with ScriptedUpstream(Scripted(raw, then="stall")) as up:
        conn = connect(up.port)
        with pytest.raises(UpstreamError) as e:
            conn.request("GET", "/x", {}, b"", TIMEOUT)
        assert fragment in str(e.value)


@pytest.mark.parametrize("size", [b"zz", b"-5", b"0x5", b""])
def test_bad_chunk_size_is_a_clear_error(connect: Connect, size: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n"
    with ScriptedUpstream(Scripted(raw, then="stall")) as up:
        conn = connect(up.port)
        resp = conn.request("GET", "/x", {}, b"", TIMEOUT)
        with pytest.raises(UpstreamError) as e:
            resp.read_all(time.monotonic() + TIMEOUT)
        assert "chunk size" in str(e.value)


def test_closed_before_the_status_line(connect: Connect) -> None:
    with ScriptedUpstream(Scripted(b"", then="close")) as up:
        conn = connect(up.port)
        with pytest.raises(UpstreamClosed):
            conn.request("GET", "/x", {}, b"", TIMEOUT)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ],
)
@pytest.mark.parametrize("then", ["reset", "close"])
def test_connection_broken_mid_body_is_an_upstream_error(
    connect: Connect, head: bytes, then: str
) -> None:
    broken = threading.Event()
    with ScriptedUpstream(Scripted(head, then=then, hold=broken)) as up:
        conn = connect(up.port)
        resp = conn.request("GET", "/x", {}, b"", TIMEOUT)
        assert resp.status == 200
        broken.set()  # the head is in: now the upstream dies
        with pytest.raises(UpstreamError):
            resp.read_all(time.monotonic() + TIMEOUT)
        assert not resp.reusable


# --- the pool ---------------------------------------------------------------------------------


def pooled_fetch(pool: UpstreamPool, port: int) -> tuple[bool, bytes, bool]:
    """(lease was reused, body, reusable) of one request through the pool."""
    lease = pool.acquire("127.0.0.1", port, TIMEOUT)
    reused = lease.reused
    try:
        if lease.conn.sock is None:
            lease.conn.connect(TIMEOUT)
        resp = lease.conn.request("GET", "/x", {}, b"", TIMEOUT)
        body = resp.read_all(time.monotonic() + TIMEOUT)
    except BaseException:
        pool.release(lease, False)
        raise
    pool.release(lease, resp.reusable)
    return reused, body, resp.reusable


def test_keep_alive_connection_is_reused() -> None:
    pool = UpstreamPool(max_per_host=4)
    script = [Scripted(ok(b"%d" % i)) for i in range(3)]
    with ScriptedUpstream(*script) as up:
        got = [pooled_fetch(pool, up.port) for _ in range(3)]
        assert got == [(False, b"0", True), (True, b"1", True), (True, b"2", True)]
        assert up.connections == 1
        assert pool.created == 1
    pool.close()


def test_connection_the_upstream_will_close_is_not_pooled() -> None:
    pool = UpstreamPool(max_per_host=4)
    closing = ok(b"a", b"Connection: close\r\n")
    with ScriptedUpstream(Scripted(closing, then="close"), Scripted(ok(b"b"))) as up:
        assert pooled_fetch(pool, up.port) == (False, b"a", False)
        assert pooled_fetch(pool, up.port) == (False, b"b", True)
        assert up.connections == 2
    pool.close()


def test_idle_connection_closed_by_the_upstream_is_dropped() -> None:
    pool = UpstreamPool(max_per_host=4)
    with ScriptedUpstream(Scripted(ok(b"a"), then="close"), Scripted(ok(b"b"))) as up:
        lease = pool.acquire("127.0.0.1", up.port, TIMEOUT)
        lease.conn.connect(TIMEOUT)
        resp = lease.conn.request("GET", "/x", {}, b"", TIMEOUT)
        assert resp.read_all(time.monotonic() + TIMEOUT) == b"a"
        sock = lease.conn.sock
        assert sock is not None
        assert select.select([sock], [], [], TIMEOUT)[0]  # the upstream's FIN is in
        pool.release(lease, resp.reusable)  # reusable by its framing, but closed since
        assert pooled_fetch(pool, up.port) == (False, b"b", True)
        assert pool.created == 2
    pool.close()


# --- the same bytes through http.client ---------------------------------------------------------


DIFFERENTIAL = {
    "content-length": ("GET", ok(b"hello", b"Content-Type: text/plain\r\n")),
    "chunked-with-trailers": (
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
    ),
    "close-delimited": ("GET", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end"),
    "100-continue": ("POST", b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}")),
    "204": ("GET", b"HTTP/1.1 204 No Content\r\nX-Why: nothing\r\n\r\n"),
    "304-with-length": ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"),
    "http-1.0": ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"),
    "repeated-and-odd-headers": (
        "GET",
        b"HTTP/1.1 503 Service Unavailable\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"Retry-After: 1\r\nX-Url: http://h:1/p?q=a:b\r\nx-lower:  spaced\r\n"
        b"Content-Length: 4\r\n\r\nbusy",
    ),
    "no-reason-phrase": ("GET", b"HTTP/1.1 404\r\nContent-Length: 2\r\n\r\nno"),
}


def via_http_client(port: int, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        c.request(method, "/x", body=b"{}" if method == "POST" else None)
        r = c.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        c.close()


def via_upstream(port: int, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
    c = Connection("127.0.0.1", port)
    c.connect(TIMEOUT)
    try:
        resp = c.request(method, "/x", {}, b"{}" if method == "POST" else b"", TIMEOUT)
        return resp.status, resp.headers, resp.read_all(time.monotonic() + TIMEOUT)
    finally:
        c.close()


@pytest.mark.parametrize("case", sorted(DIFFERENTIAL))
def test_same_answer_as_http_client(case: str) -> None:
    method, raw = DIFFERENTIAL[case]
    with ScriptedUpstream(Scripted(raw, then="close"), Scripted(raw, then="close")) as up:
        reference = via_http_client(up.port, method)
        ours = via_upstream(up.port, method)
    assert ours == reference

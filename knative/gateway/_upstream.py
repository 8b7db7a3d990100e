"""A lean HTTP/1.1 client and a bounded keep-alive connection pool for calls to the replicas.

The gateway pays this on every request, so it is kept small. Measured against the fast stub
upstream on the development machine (one small POST on one keep-alive connection, client and
upstream in separate processes): httpx about 370 us per request, urllib3's pool 184-215 us,
http.client about 114 us — and http.client still sends headers and body in two ``send`` calls
and parses the response head with the email package. This client sends each request with one
``sendall`` and parses the status line and headers by hand; bodies are Content-Length,
chunked, or read to the close (RFC 9112 section 6.3: a response to HEAD, and a 204 or 304,
has no body whatever its headers say; interim 1xx responses are skipped). A malformed head or
chunk, and a connection closed or reset inside a body, raise :class:`UpstreamError` at once.

The pool keeps at most ``max_per_host`` connections per replica (callers wait up to a timeout
for a free one), reuses idle connections last-in first-out, and drops an idle connection whose
socket became readable (the replica closed it) before using it.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections.abc import Callable

# Waits for the response head after a request went out: called with ``readable(seconds)``
# (whether the head's first bytes arrive within that long); raises TimeoutError to give up.
HeadWait = Callable[[Callable[[float], bool]], None]

_MAX_LINE = 65536
_MAX_HEADERS = 200
_HEX = b"0123456789abcdefABCDEF"


class UpstreamError(Exception):
    """The upstream broke the HTTP exchange (bad status line, bad chunk, closed mid-body)."""


class UpstreamClosed(UpstreamError, ConnectionError):
    """The connection closed before a status line arrived (e.g. an idle keep-alive closed)."""


class NoFirstByte(TimeoutError):
    """The upstream sent no byte of its answer within the wait the caller allowed."""


class PoolExhausted(Exception):
    """No connection to this replica became free in time (the pool is at its bound)."""


def _line(f: io.BufferedReader, what: str) -> bytes:
    """One CRLF- (or LF-) terminated line; ``b""`` at the close. A line longer than the limit
    is an error, not a line cut in two."""
    line = f.readline(_MAX_LINE)
    if len(line) >= _MAX_LINE and not line.endswith(b"\n"):
        raise UpstreamError(f"{what} longer than {_MAX_LINE} bytes")
    return line


def _status(line: bytes) -> tuple[bytes, int]:
    """The version and status code of a status line."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise UpstreamError(f"bad status line {line[:60]!r}")
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or code.startswith(b"0"):
        raise UpstreamError(f"bad status line {line[:60]!r}")
    return parts[0], int(code)


class _Head:
    """The header fields of one response, and what they say about its framing."""

    __slots__ = ("chunked", "close", "headers", "keep_alive", "length")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        self.chunked = False
        self.close = False
        self.keep_alive = False

    def add(self, h: bytes) -> None:
        if len(self.headers) >= _MAX_HEADERS:
            raise UpstreamError("too many response headers")
        name, sep, value = h.partition(b":")
        if not sep:
            raise UpstreamError(f"bad header line {h[:60]!r}")
        k = name.strip().decode("latin-1")
        v = value.strip().decode("latin-1")
        self.headers.append((k, v))
        lk = k.lower()
        if lk == "content-length":
            if not (v.isascii() and v.isdigit()):
                raise UpstreamError(f"bad Content-Length {v!r}")
            self.length = int(v)
        elif lk == "transfer-encoding":
            self.chunked = "chunked" in v.lower()
        elif lk == "connection":
            lv = v.lower()
            if "close" in lv:
                self.close = True
            elif "keep-alive" in lv:
                self.keep_alive = True


class Response:
    """The head of a response, and its body read on demand."""

    __slots__ = (
        "_chunk_left",
        "chunked",
        "conn",
        "done",
        "headers",
        "length",
        "status",
        "will_close",
    )

    def __init__(self, conn: Connection, status: int, headers: list[tuple[str, str]],
                 length: int | None, chunked: bool, will_close: bool) -> None:
        self.conn = conn
        self.status = status
        self.headers = headers
        self.length = length  # bytes of body left (Content-Length), else None
        self.chunked = chunked
        self.will_close = will_close
        self.done = length == 0 and not chunked
        self._chunk_left = 0

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def reusable(self) -> bool:
        """Fully read, and the upstream keeps the connection open."""
        return self.done and not self.will_close

    def read_some(self, timeout: float) -> bytes:
        """The next piece of body as soon as it arrives (one chunk of a chunked body);
        ``b""`` at the end. Raises ``TimeoutError``, or :class:`UpstreamError` when the
        upstream breaks the body (a bad chunk, a close or a reset before its end)."""
        if self.done:
            return b""
        conn = self.conn
        if conn.sock is None:
            raise UpstreamError("connection already closed")
        conn.sock.settimeout(max(timeout, 1e-3))
        try:
            if self.chunked:
                return self._read_chunked(conn.rfile)
            if self.length is not None:
                return self._read_length(conn.rfile)
            return self._read_to_close(conn.rfile)
        except TimeoutError:
            raise
        except OSError as exc:  # reset, broken: the body will not be finished
            raise UpstreamError(f"connection broken inside the body ({exc})") from exc

    def _read_chunked(self, f: io.BufferedReader) -> bytes:
        if self._chunk_left == 0:
            line = _line(f, "chunk size line")
            if not line:
                raise UpstreamError("connection closed inside a chunked body")
            size_field = line.split(b";", 1)[0].strip()
            if not size_field or size_field.translate(None, _HEX):
                raise UpstreamError(f"bad chunk size line {line[:40]!r}")
            size = int(size_field, 16)
            if size == 0:
                self._read_trailers(f)
                return b""
            self._chunk_left = size
        data = f.read1(self._chunk_left)
        if not data:
            raise UpstreamError("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and _line(f, "chunk end") not in (b"\r\n", b"\n"):
            raise UpstreamError("chunk not followed by CRLF")
        return data

    def _read_trailers(self, f: io.BufferedReader) -> None:
        """Trailer fields, up to the empty line: read and dropped."""
        while True:
            t = _line(f, "trailer line")
            if t in (b"\r\n", b"\n"):
                break
            if not t:
                raise UpstreamError("connection closed inside the trailers")
        self.done = True

    def _read_length(self, f: io.BufferedReader) -> bytes:
        assert self.length is not None
        data = f.read1(min(self.length, 65536))
        if not data:
            raise UpstreamError(f"connection closed with {self.length} body bytes missing")
        self.length -= len(data)
        if self.length == 0:
            self.done = True
        return data

    def _read_to_close(self, f: io.BufferedReader) -> bytes:
        data = f.read1(65536)  # delimited by the close
        if not data:
            self.done = True
            self.will_close = True
        return data

    def read_all(self, deadline: float) -> bytes:
        parts = []
        while not self.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out reading the response body")
            data = self.read_some(remaining)
            if data:
                parts.append(data)
        return b"".join(parts)


class Connection:
    """One HTTP/1.1 connection to a replica."""

    __slots__ = ("_hostport", "host", "port", "rfile", "sock")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.sock: socket.socket | None = None
        self.rfile: io.BufferedReader
        self._hostport = f"{host}:{port}"

    def connect(self, timeout: float) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=65536)  # type: ignore[assignment]

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                timeout: float, wait: HeadWait | None = None) -> Response:
        """Send the request in one write and read the response head (after ``wait``, when
        given, says it is coming: it may raise :class:`NoFirstByte` first)."""
        sock = self.sock
        assert sock is not None
        sock.settimeout(timeout)
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {self._hostport}\r\n"]
        for k, v in headers.items():
            lines.append(f"{k}: {v}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        sock.sendall("".join(lines).encode("latin-1") + body)
        if wait is not None:
            wait(self._readable)
        return self._read_head(method)

    def _readable(self, seconds: float) -> bool:
        """Whether the answer's first bytes arrive within ``seconds`` (nothing of it is
        buffered yet: the previous answer on this connection was read to its end)."""
        if self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, seconds))
        except (OSError, ValueError):
            return True  # the read that follows says what is wrong
        return bool(readable)

    def _read_head(self, method: str) -> Response:
        """The final response's head; interim 1xx responses (100 Continue, 103 Early Hints)
        before it are read and dropped."""
        while True:
            line = _line(self.rfile, "status line")
            if not line:
                raise UpstreamClosed("connection closed before the status line")
            version, status = _status(line)
            head = self._read_fields()
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: the real answer follows
            return self._framed(method, version, status, head)

    def _read_fields(self) -> _Head:
        head = _Head()
        while True:
            h = _line(self.rfile, "header line")
            if h in (b"\r\n", b"\n"):
                return head
            if not h:
                raise UpstreamError("connection closed inside the response head")
            head.add(h)

    def _framed(self, method: str, version: bytes, status: int, head: _Head) -> Response:
        """The response with its body's framing (RFC 9112 section 6.3): none for HEAD, 101,
        204 and 304 whatever the header fields say; else chunked, Content-Length, or the
        close."""
        will_close = head.close or (version == b"HTTP/1.0" and not head.keep_alive)
        length = head.length
        chunked = head.chunked
        if status == 101:  # another protocol follows: no HTTP body, and no reuse
            length, chunked, will_close = 0, False, True
        elif method == "HEAD" or status in (204, 304):
            length, chunked = 0, False
        elif chunked:
            length = None
        elif length is None:
            will_close = True  # delimited by the close
        return Response(self, status, head.headers, length, chunked, will_close)

    def dropped(self) -> bool:
        """An idle keep-alive connection with something to read has been closed by the peer."""
        if self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.rfile.close()
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def answers(host: str, port: int, timeout: float, path: str = "/healthz") -> bool:
    """Whether the server at host:port answers a ``GET path`` at all (any status) within
    ``timeout``, on a connection of its own: a frozen process accepts connections (the
    kernel's backlog) but answers nothing."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 1e-3)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:  # refused, reset, timed out
        return False


class _HostPool:
    __slots__ = ("host", "idle", "lock", "port", "sem")

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.sem = threading.BoundedSemaphore(size)
        self.idle: list[Connection] = []
        self.lock = threading.Lock()


class Lease:
    """A connection taken from the pool; give it back with :meth:`UpstreamPool.release`."""

    __slots__ = ("conn", "pool", "reused", "wait")

    def __init__(self, pool: _HostPool, conn: Connection, reused: bool) -> None:
        self.pool = pool
        self.conn = conn
        self.reused = reused
        self.wait: HeadWait | None = None  # how long the answer's first byte may take


class UpstreamPool:
    def __init__(self, max_per_host: int = 64, connect_timeout: float = 1.0) -> None:
        if max_per_host < 1:
            raise ValueError("max_per_host must be >= 1")
        self.max_per_host = max_per_host
        self.connect_timeout = connect_timeout
        self._hosts: dict[tuple[str, int], _HostPool] = {}
        self._lock = threading.Lock()
        self.created = 0  # connections made (for tests and metrics)

    def _host(self, host: str, port: int) -> _HostPool:
        hp = self._hosts.get((host, port))
        if hp is None:
            with self._lock:
                hp = self._hosts.get((host, port))
                if hp is None:
                    hp = self._hosts[(host, port)] = _HostPool(host, port, self.max_per_host)
        return hp

    def acquire(self, host: str, port: int, timeout: float) -> Lease:
        """A connection to host:port (not yet connected if new), waiting at most ``timeout``
        seconds for a free slot."""
        hp = self._host(host, port)
        if not hp.sem.acquire(timeout=max(0.0, timeout)):
            raise PoolExhausted(
                f"all {self.max_per_host} connections to {host}:{port} busy for {timeout:.3f} s"
            )
        while True:
            with hp.lock:
                conn = hp.idle.pop() if hp.idle else None
            if conn is None:
                break
            if conn.dropped():
                conn.close()
                continue
            return Lease(hp, conn, True)
        self.created += 1
        return Lease(hp, Connection(host, port), False)

    def renew(self, lease: Lease) -> None:
        """Replace a lease's connection by a new one, keeping its slot."""
        lease.conn.close()
        lease.conn = Connection(lease.pool.host, lease.pool.port)
        lease.reused = False
        self.created += 1

    def release(self, lease: Lease, reusable: bool) -> None:
        """Give the connection back: kept for reuse, or closed."""
        if reusable and lease.conn.sock is not None:
            with lease.pool.lock:
                lease.pool.idle.append(lease.conn)
        else:
            lease.conn.close()
        lease.pool.sem.release()

    def close(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
        for hp in hosts:
            with hp.lock:
                idle, hp.idle = hp.idle, []
            for c in idle:
                c.close()

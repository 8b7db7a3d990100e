"""Shared pieces of the gateway and breaker benchmarks: a lean keep-alive HTTP load client and
helpers to start the stub upstream and gateway processes.

The client speaks HTTP/1.1 over raw sockets with a prebuilt request, so it costs a few tens of
microseconds per request and measures the server, not itself.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BODY = json.dumps({"model": "m", "prompt": "Say hi", "max_tokens": 4}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_bytes(host: str, port: int, path: str = "/v1/completions", body: bytes = BODY,
                  extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Conn:
    """One keep-alive connection that sends a fixed request and reads one response."""

    def __init__(self, host: str, port: int, req: bytes) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.req = req

    def call(self) -> tuple[int, dict[str, str]]:
        self.sock.sendall(self.req)
        status_line = self.f.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        length = 0
        chunked = False
        while True:
            line = self.f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            headers[k] = v.strip()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            while True:
                size = int(self.f.readline().split(b";")[0], 16)
                self.f.read(size + 2)
                if size == 0:
                    break
        else:
            self.f.read(length)
        return status, headers

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@dataclass
class RoundResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run_round(host: str, port: int, concurrency: int, seconds: float,
              req: bytes | None = None) -> RoundResult:
    """``concurrency`` closed-loop clients for ``seconds``."""
    req = req or request_bytes(host, port)
    lats: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    conns = [Conn(host, port, req) for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        c = conns[i]
        out = lats[i]
        start.wait()
        end = stop_at[0]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                status, _ = c.call()
            except (OSError, ValueError):
                errors[i] += 1
                c.close()
                conns[i] = c = Conn(host, port, req)
                continue
            if status != 200:
                errors[i] += 1
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t_begin = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    took = time.perf_counter() - t_begin
    for c in conns:
        c.close()
    all_lats = [x for xs in lats for x in xs]
    return RoundResult(len(all_lats), sum(errors), took, all_lats)


def start_stub(port: int, delay_ms: float = 0.0, name: str = "stub") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.knative.stub_upstream", "--port", str(port),
         "--delay-ms", str(delay_ms), "--name", name],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY"):
        raise RuntimeError(f"stub upstream did not start: {line!r}")
    return proc


def start_gateway(port: int, targets: list[str], fallback: str | None = None,
                  workers: int = 1, env: dict[str, str] | None = None,
                  extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "gateway",
            "--port", str(port), "--workers", str(workers)]
    for t in targets:
        argv += ["--target", t]
    if fallback:
        argv += ["--fallback", fallback]
    argv += extra or []
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")

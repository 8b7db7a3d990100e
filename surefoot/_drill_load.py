"""The drill's load: an open-loop client of the gateway, independent of it, that records every
request it sends, so continuity and latency are measured from outside the system under test.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

PROMPT = "Reply with one word:"
STREAM_PROMPT = "Count from one to twenty in words:"
LOAD_TIMEOUT = 30.0


@dataclass
class Sample:
    """One request of the load: when it was sent and answered, how, and by which replica."""

    start: float
    end: float
    status: int
    replica: str = ""
    error: str = ""
    kind: str = "plain"  # or "stream"
    max_gap: float = 0.0  # a stream's longest wait between two events (seconds)

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency(self) -> float:
        return self.end - self.start


class LoadGenerator:
    """Open-loop load at a fixed rate: a request is sent every 1/rate s whatever the answers."""

    def __init__(self, url: str, rate: float, max_tokens: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.interval = 1.0 / rate
        self.max_tokens = max_tokens
        self.clock = clock
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="load")
        self._http = httpx.Client(timeout=LOAD_TIMEOUT,
                                  limits=httpx.Limits(max_connections=64))
        self._thread = threading.Thread(target=self._run, name="load-scheduler", daemon=True)

    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _one(self) -> None:
        start = self.clock()
        try:
            r = self._http.post(self.url, json={"prompt": PROMPT, "max_tokens": self.max_tokens,
                                                "temperature": 0})
            s = Sample(start, self.clock(), r.status_code, r.headers.get("x-surefoot-replica", ""),
                       "" if r.status_code == 200 else r.text[:200])
        except httpx.HTTPError as exc:
            s = Sample(start, self.clock(), 0, "", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.samples.append(s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True)
        self._http.close()

    def window(self, t0: float, t1: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.start < t1]


class StreamLoad:
    """``clients`` closed-loop clients, each streaming one chat completion after another. A
    stream is ok when it ended with a ``finish_reason`` and ``[DONE]`` and no error event; a
    stream cut short, or ended by an error event, is broken. ``in_flight`` says which replica
    each open stream started on, so a phase can pick the replica with streams to hurt."""

    def __init__(self, url: str, clients: int, max_tokens: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.clients = clients
        self.max_tokens = max_tokens
        self.clock = clock
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._open: dict[int, str] = {}
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=httpx.Timeout(LOAD_TIMEOUT, connect=5.0),
                                  limits=httpx.Limits(max_connections=clients + 4))
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"stream-{i}") for i in range(clients)]

    def start(self) -> StreamLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(LOAD_TIMEOUT + 5)
        self._http.close()

    def in_flight(self) -> dict[str, int]:
        """Open streams per replica (by the replica that started them)."""
        with self._lock:
            out: dict[str, int] = {}
            for replica in self._open.values():
                out[replica] = out.get(replica, 0) + 1
            return out

    def window(self, t0: float, t1: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.start < t1]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            s = self._one(i)
            with self._lock:
                self._open.pop(i, None)
                self.samples.append(s)
            if not s.ok:
                self._stop.wait(0.2)  # a failing system is not hammered by a tight loop

    def _one(self, i: int) -> Sample:
        start = self.clock()
        body = {"messages": [{"role": "user", "content": STREAM_PROMPT}], "stream": True,
                "max_tokens": self.max_tokens, "temperature": 0}
        gap, last, replica = 0.0, time.monotonic(), ""
        finished = done = False
        try:
            with self._http.stream("POST", self.url, json=body) as r:
                replica = r.headers.get("x-surefoot-replica", "")
                if r.status_code != 200:
                    r.read()
                    return Sample(start, self.clock(), r.status_code, replica,
                                  r.text[:200], "stream")
                with self._lock:
                    self._open[i] = replica
                for line in r.iter_lines():
                    now = time.monotonic()
                    gap, last = max(gap, now - last), now
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        done = True
                        break
                    error, fin = _stream_event(data)
                    if error:
                        return Sample(start, self.clock(), 200, replica,
                                      f"error event: {error}", "stream", gap)
                    finished = finished or fin
        except httpx.HTTPError as exc:
            return Sample(start, self.clock(), 0, replica, f"broken: {type(exc).__name__}",
                          "stream", gap)
        error = "" if finished and done else "broken: ended without finish_reason and [DONE]"
        return Sample(start, self.clock(), 200, replica, error, "stream", gap)


def _stream_event(data: str) -> tuple[str, bool]:
    """(the error message of an error event or "", whether a choice finished)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return f"not JSON: {data[:80]}", False
    if "error" in doc:
        return str(doc["error"].get("message", doc["error"]))[:160], False
    return "", any(c.get("finish_reason") for c in doc.get("choices", []))


def p(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to 0.1 ms; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)

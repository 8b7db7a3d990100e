"""The drill's load: an open-loop client of the gateway, independent of it, that records every
request it sends, so continuity and latency are measured from outside the system under test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

PROMPT = "Reply with one word:"
LOAD_TIMEOUT = 30.0


@dataclass
class Sample:
    """One request of the load: when it was sent and answered, how, and by which replica."""

    start: float
    end: float
    status: int
    replica: str = ""
    error: str = ""

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


def p(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to 0.1 ms; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)

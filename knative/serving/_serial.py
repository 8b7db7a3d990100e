"""One thread for every call into a native engine that runs one request at a time.

llama.cpp runs its matrix work on an OpenMP team that belongs to the calling thread; calls
from a server's many request threads would each grow a team of their own, competing for the
cores. One engine thread keeps one team and serialises the non-reentrant engine.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Claim:
    """Work that the engine starts or the caller cancels, never both: whoever moves it out of
    ``queued`` first wins."""

    def __init__(self) -> None:
        self._state = "queued"  # queued | started | cancelled
        self._lock = threading.Lock()

    def try_start(self) -> bool:
        with self._lock:
            if self._state == "queued":
                self._state = "started"
                return True
            return False

    def cancel(self) -> bool:
        """Cancel; True when the engine had not started it yet."""
        with self._lock:
            was_queued = self._state == "queued"
            self._state = "cancelled"
            return was_queued

    @property
    def cancelled(self) -> bool:
        return self._state == "cancelled"


class _Job(Claim):
    """A unit of engine work; it is either started by the engine or cancelled, never both."""

    _DONE = object()

    def __init__(self, fn: Callable[[], Any], stream: bool) -> None:
        super().__init__()
        self.fn = fn
        self.stream = stream
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()


class SerialEngine:
    """One thread makes every call into a native engine.

    llama.cpp runs its matrix work on an OpenMP team that belongs to the calling thread; calls
    from a server's many request threads would each grow a team of their own, competing for
    the cores. One engine thread keeps one team, serialises the non-reentrant engine, and
    bounds the wait: work not started within ``queue_timeout`` is dropped with EngineBusy.
    """

    def __init__(self, name: str, queue_timeout: float) -> None:
        self.queue_timeout = queue_timeout
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # jobs the engine has started (read on the engine thread: the number of the one running)
        self.jobs_started = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if not job.try_start():
                continue
            self.jobs_started += 1
            job.out.put(("started", None))
            try:
                if job.stream:
                    for item in job.fn():
                        if job.cancelled:
                            break
                        job.out.put(("item", item))
                    job.out.put(("done", None))
                else:
                    job.out.put(("done", job.fn()))
            except BaseException as exc:  # handed to the caller's thread
                job.out.put(("error", exc))

    def _submit(self, fn: Callable[[], Any], stream: bool) -> _Job:
        job = _Job(fn, stream)
        self._jobs.put(job)
        try:
            kind, _ = job.out.get(timeout=self.queue_timeout)
        except queue.Empty:
            if job.cancel():
                from knative.serving._backends import EngineBusy

                raise EngineBusy(
                    f"engine busy for more than {self.queue_timeout:.0f} s"
                ) from None
            kind, _ = job.out.get()  # started at the last moment
        assert kind == "started"
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        job = self._submit(fn, stream=False)
        kind, value = job.out.get()
        if kind == "error":
            raise value
        return value

    def stream(self, fn: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        job = self._submit(fn, stream=True)
        # a consumer that stops early frees the engine at the next token
        yield from drained(job.out, "item", job.cancel)


def drained(out: queue.SimpleQueue[Any], kind: str,
            cancel: Callable[[], object]) -> Generator[Any, None, None]:
    """The values an engine thread puts on ``out`` as ``(kind, value)``, until it puts
    anything else; an ``("error", exc)`` is raised here. ``cancel`` runs however the consumer
    leaves, so one that stops early frees what the engine holds for it."""
    try:
        while True:
            got, value = out.get()
            if got == kind:
                yield value
            elif got == "error":
                raise value
            else:
                return
    finally:
        cancel()


def burst(inbox: queue.SimpleQueue[T], first: T, quiet: float, window: float,
          clock: Callable[[], float], enough: Callable[[], bool]) -> Iterator[T]:
    """``first``, then what ``inbox`` holds, then (``quiet`` above 0) what comes within
    ``quiet`` seconds of the item before, for at most ``window`` seconds from the start, until
    ``enough()``: the rest of a burst of requests."""
    deadline = clock() + window
    item = first
    while True:
        yield item
        try:
            item = inbox.get_nowait()
            continue
        except queue.Empty:
            pass
        left = deadline - clock()
        if quiet <= 0 or left <= 0 or enough():
            return
        try:
            item = inbox.get(timeout=min(quiet, left))
        except queue.Empty:
            return

"""Keeps the processes ``surefoot up`` runs itself alive, as the local platform keeps replicas.

The embedded Redis and the gateway are single processes on one machine: without a supervisor a
``SIGKILL`` to either ends the breakers' reflexes or the OpenAI endpoint for good. Each one is a
:class:`Supervised` child: when it exits, what it left behind goes with it (its process group),
and it is started again after an exponential backoff (``CrashLoopBackOff``) that resets once it
has run for a while. A :class:`Supervisor` thread steps every child and runs periodic chores
(replica log retention, the durable copy of operator state); ``status()`` is what ``surefoot
status`` shows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

RUNNING = "Running"
BACKOFF = "CrashLoopBackOff"
STOPPED = "Stopped"


class Child(Protocol):
    """A process a :class:`Supervised` keeps running."""

    def launch(self) -> None:
        """Start it (may wait until it answers); raises if it cannot start."""

    def exited(self) -> int | None:
        """Its exit code once it has died (and everything it left is gone); else ``None``."""

    @property
    def pid(self) -> int | None: ...


class Supervised:
    """One child: restarted ``backoff * 2**(n-1)`` seconds (at most ``backoff_max``) after its
    n-th exit in a row; a child that ran ``reset_after`` seconds starts the count again."""

    def __init__(self, name: str, child: Child, *, backoff: float = 0.1,
                 backoff_max: float = 10.0, reset_after: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_restart: Callable[[], None] | None = None) -> None:
        self.name = name
        self.child = child
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.reset_after = reset_after
        self._clock = clock
        self._on_restart = on_restart
        self.phase = RUNNING
        self.restarts = 0  # restarts since start, as a pod's restart count
        self.crashes = 0  # exits in a row, for the backoff
        self.last_exit: int | None = None
        self.last_error = ""
        self.started_at = clock()
        self.restart_at = 0.0

    def step(self) -> None:
        """Notice an exit, or restart a child whose backoff is over."""
        now = self._clock()
        if self.phase == RUNNING:
            code = self.child.exited()
            if code is None:
                if self.crashes and now - self.started_at >= self.reset_after:
                    self.crashes = 0
                return
            self.last_exit = code
            self._crashed(now, f"exited with {code}")
        elif self.phase == BACKOFF and now >= self.restart_at:
            self.restarts += 1
            try:
                self.child.launch()
            except Exception as exc:  # a failed start is one more crash
                self._crashed(self._clock(), f"could not start: {exc}")
                return
            self.phase = RUNNING
            self.started_at = self._clock()
            log.warning("%s restarted (restart %d, pid %s)", self.name, self.restarts,
                        self.child.pid)
            if self._on_restart is not None:
                self._on_restart()

    def _crashed(self, now: float, why: str) -> None:
        self.crashes += 1
        wait = min(self.backoff * 2 ** (self.crashes - 1), self.backoff_max)
        self.restart_at = now + wait
        self.phase = BACKOFF
        self.last_error = why
        log.warning("%s %s: restarting in %.1f s", self.name, why, wait)

    def stop(self) -> None:
        self.phase = STOPPED

    def status(self) -> dict[str, Any]:
        describe = getattr(self.child, "describe", None)
        return {"name": self.name, "phase": self.phase,
                "pid": self.child.pid if self.phase == RUNNING else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "last_error": self.last_error or None,
                **(describe() if callable(describe) else {})}


class Supervisor:
    """Steps every child every ``tick`` seconds in one thread, and runs ``chores`` (each
    ``(interval, fn)``) on their own intervals; a failing chore is logged, never fatal."""

    def __init__(self, children: Iterable[Supervised],
                 chores: Iterable[tuple[float, Callable[[], None]]] = (),
                 tick: float = 0.05) -> None:
        self.children = list(children)
        self._chores = [(interval, fn, [0.0]) for interval, fn in chores]
        self.tick = tick
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="up-supervisor", daemon=True)
        self._thread.start()
        return self

    def add(self, child: Supervised) -> None:
        with self._lock:
            self.children.append(child)

    def step(self) -> None:
        with self._lock:
            for c in self.children:
                try:
                    c.step()
                except Exception:  # the supervisor must keep running
                    log.exception("supervising %s failed", c.name)
        now = time.monotonic()
        for interval, fn, last in self._chores:
            if now - last[0] >= interval:
                last[0] = now
                try:
                    fn()
                except Exception:
                    log.exception("chore %s failed", getattr(fn, "__name__", fn))

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self.step()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        with self._lock:
            for c in self.children:
                c.stop()

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.status() for c in self.children]


class ProcessChild:
    """A command run in its own session; when its leader dies the whole group is killed (a
    gunicorn worker orphaned by its master would keep the port)."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]]) -> None:
        self._start = start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def launch(self) -> None:
        self.proc = self._start()

    def exited(self) -> int | None:
        p = self.proc
        if p is None:
            return None
        code = p.poll()
        if code is not None:
            kill_group(p.pid, signal.SIGKILL)
        return code


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def prune_replica_logs(log_dir: Path, revisions: Iterable[str], live: set[str],
                       keep: int) -> list[Path]:
    """Remove the logs of gone replicas of each revision beyond the ``keep`` newest; the logs
    of ``live`` replicas stay. Returns what was removed."""
    removed = []
    for rev in revisions:
        pattern = re.compile(rf"^{re.escape(rev)}-[0-9a-f]{{6}}\.log$")
        gone = []
        for f in log_dir.iterdir() if log_dir.is_dir() else ():
            if pattern.match(f.name) and f.stem not in live:
                with contextlib.suppress(OSError):
                    gone.append((f.stat().st_mtime, f))
        gone.sort(reverse=True)
        for _, f in gone[keep:]:
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed

"""The processes of the local platform: how a ``surefoot serve`` replica is started, signalled
and given its priority.

A replica (or a standby) is a process group of its own (the serve master and its worker), so
that a signal reaches both, as it reaches every process of a container. A process that starts
runs at a low priority until the platform says otherwise: on a cluster it would start on a
node of its own, not take CPU from the replicas that serve.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: Sequence[str], env: Mapping[str, str], log_path: Path,
          nice: int) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own, appending its output to ``log_path``, at
    ``nice`` (0: the parent's priority)."""
    logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(list(cmd), stdout=logf, stderr=subprocess.STDOUT,
                                env=dict(env), start_new_session=True,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)
    finally:
        logf.close()


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """Every process as (pid, state, parent pid, process group), from ``/proc``; one that
    ends while it is read is left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                state, ppid, pgid = fh.read().rsplit(")", 1)[1].split()[:3]
            yield int(entry), state, int(ppid), int(pgid)
        except (OSError, ValueError):
            continue


def renice_tree(pid: int, value: int) -> None:
    """Set the nice value of every thread of ``pid`` and of its child processes (Linux keeps
    a nice value per thread)."""
    try:
        pids = [pid, *(child for child, _, ppid, _ in _processes() if ppid == pid)]
        for p in pids:
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), value)
    except OSError:
        pass


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def group_members(pgid: int) -> list[int]:
    """The processes of the group ``pgid`` that still run. A zombie is not one: a worker
    orphaned by its master is reparented to init, which reaps it in its own time, and holds
    nothing but its process id meanwhile."""
    return [pid for pid, state, _, group in _processes()
            if group == pgid and state not in ("Z", "X")]


def end_groups(procs: Sequence[subprocess.Popen[bytes]], grace: float,
               clock: Callable[[], float] = time.monotonic,
               pause: Callable[[float], None] = time.sleep) -> list[int]:
    """SIGTERM each process group of ``procs``, SIGKILL what runs of it after ``grace``
    seconds, and wait (a few seconds more at most) until no process of the groups runs: the
    leader's exit is not enough, its worker may outlive it. The pids still running, if any."""
    for p in procs:
        signal_group(p, signal.SIGTERM)
    deadline = clock() + grace
    killed = False
    while True:
        left = [pid for p in procs for pid in group_members(p.pid)]
        if not left:
            for p in procs:
                p.poll()  # reap the leaders (a zombie leader is no member either)
            return []
        if clock() >= deadline:
            if killed:
                return left
            for p in procs:
                signal_group(p, signal.SIGKILL)
            killed, deadline = True, clock() + 5.0
        pause(0.05)

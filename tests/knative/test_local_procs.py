"""How the local platform ends a replica's process group: a leader's exit is not the group's,
the worker it leaves behind (one that ignores SIGTERM, here) is killed and waited for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from knative.platforms.local._procs import end_groups, group_members

# a leader that exits on SIGTERM at once, and a child in its group that ignores it
GROUP = textwrap.dedent("""
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(60)
""")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds


def test_the_worker_a_leader_leaves_behind_is_killed_and_waited_for() -> None:
    leader = subprocess.Popen([sys.executable, "-c", GROUP], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    assert sorted(group_members(leader.pid)) == sorted([leader.pid, child])
    clock = Clock()
    assert end_groups([leader], grace=1.0, clock=clock, pause=clock.pause) == []
    assert leader.returncode is not None
    assert group_members(leader.pid) == []
    assert clock.now >= 1.0  # the child outlived the SIGTERM: it took the SIGKILL


def test_a_group_that_goes_on_sigterm_is_not_killed() -> None:
    leader = subprocess.Popen([sys.executable, "-c", "import time; print(1, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    leader.stdout.readline()
    clock = Clock()
    assert end_groups([leader], grace=30.0, clock=clock, pause=clock.pause) == []
    assert leader.returncode == -15

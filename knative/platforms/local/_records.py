"""What the local platform knows: its settings, the revisions it runs, its simulated nodes and
its replicas (with their timelines), and the ``surefoot serve`` command line of a replica.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from knative.platforms import Replica

INTERNAL_TOKEN_ENV = "SUREFOOT_INTERNAL_TOKEN"


@dataclass(frozen=True)
class RevisionSpec:
    """One revision of a service: how many replicas, and the ``surefoot serve`` flags."""

    name: str
    service: str
    tag: str
    min_scale: int
    max_scale: int
    serve_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalSettings:
    """How the local platform runs its replicas.

    A replica's environment is ``base_env`` (what a process inherits from its parent: the entry
    point passes ``os.environ``), then ``env``, then ``SUREFOOT_REVISION`` (and
    ``SUREFOOT_REDIS_URL`` when ``redis_url`` is set). ``standby``: loaded replica processes
    kept per revision, not counted and not routed to, that take over a lost replica at once;
    they are protected by ``SUREFOOT_INTERNAL_TOKEN`` of ``env`` (one is made when it has none).
    """

    nodes: int = 4
    namespace: str = "default"
    checkpoint_dir: str = ""
    log_dir: str = ""
    redis_url: str = ""
    grace_seconds: float = 10.0
    crash_backoff: float = 1.0
    crash_backoff_max: float = 30.0
    crashloop_after: int = 3  # restarts before the replica is reported in CrashLoopBackOff
    tick: float = 0.05
    # A starting replica runs at this nice level until it is ready: on a cluster it would start
    # on a node of its own, not take CPU from the replicas that serve (0 disables). A standby
    # keeps it until it takes over.
    start_nice: int = 19
    probe_timeout: float = 0.5
    standby: int = 0
    # a standby taken over is replaced this long after: the first requests the replacement
    # serves do not share the machine with a process that starts (and reads its models)
    standby_refill_delay: float = 3.0
    adopt_timeout: float = 5.0
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)
    base_env: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> LocalSettings:
        from knative.platforms import PermanentPlatformError

        if self.standby_refill_delay < 0:
            raise PermanentPlatformError(
                f"standby_refill_delay: must be 0 or more, got {self.standby_refill_delay}")
        if self.standby < 0:
            raise PermanentPlatformError(f"standby: must be 0 or more, got {self.standby}")
        if self.nodes < 1:
            raise PermanentPlatformError(f"nodes: must be 1 or more, got {self.nodes}")
        return self


@dataclass
class NodeRecord:
    name: str
    unschedulable: bool = False
    ready: bool = True
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ReplicaRecord:
    name: str
    revision: str
    service: str
    node: str | None = None
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    phase: str = "Pending"  # Pending | Running | Terminating | CrashLoopBackOff
    ready: bool = False
    restarts: int = 0
    restart_at: float = 0.0
    terminate_reason: str = ""
    kill_at: float = 0.0
    exit_code: int | None = None
    # the process is a standby taking over (its log is the standby's)
    adopted_from: str = ""
    pending_reason: str = ""
    # timeline, wall clock
    created: float = field(default_factory=time.time)
    scheduled: float | None = None
    started: float | None = None
    ready_at: float | None = None
    terminating_at: float | None = None

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None

    @property
    def log_name(self) -> str:
        return self.adopted_from or self.name

    def view(self) -> Replica:
        return Replica(self.name, self.node, self.revision, self.url if self.proc else None,
                       self.ready, self.phase, self.proc.pid if self.proc else None)


def serve_command(s: LocalSettings, spec: RevisionSpec, name: str, port: int,
                  node: str | None, *, standby: bool = False) -> list[str]:
    """The ``surefoot serve`` command line of replica ``name`` (a standby has no node yet)."""
    cmd = [
        s.python, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--replica", name, "--revision", spec.name, "--node", node or "",
        "--grace-seconds", str(s.grace_seconds), *spec.serve_args,  # later flags win
    ]
    if s.checkpoint_dir:
        cmd += ["--checkpoint-dir", s.checkpoint_dir]
    if standby:
        cmd.append("--standby")
    return cmd


def serve_env(s: LocalSettings, spec: RevisionSpec, token: str) -> dict[str, str]:
    env = {**s.base_env, **s.env, "SUREFOOT_REVISION": spec.name}
    if token:
        env[INTERNAL_TOKEN_ENV] = token
    if s.redis_url:
        env["SUREFOOT_REDIS_URL"] = s.redis_url
    return env

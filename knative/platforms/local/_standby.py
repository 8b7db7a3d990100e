"""Warm standbys of the local platform: loaded replica processes waiting to replace a lost one.

A replacement started from nothing costs seconds (Python, imports, two models) while the other
replicas serve; a standby has paid that in advance, at the lowest priority. It is a ``surefoot
serve --standby`` process per revision (``LocalSettings.standby`` of them), on no node, not a
replica: it is not counted, not listed, not routed to, and the anti-affinity of its revision
does not see it. When a replica is lost (deleted, evicted, crashed, killed, draining after a
SIGTERM) the platform places the replacement on a node as usual and hands a standby that
identity (``POST /admin/adopt``, with the internal token): the standby restores the revision's
checkpoint and serves. Its place in the pool is refilled in the background, at the same low
priority, a few seconds later (``standby_refill_delay``: the replacement's first requests do not
share the machine with a process that starts); a standby that crashes is restarted with
backoff. A loss while the pool refills takes the standby still loading: it is raised to the
replicas' priority and adopts the identity once loaded, sooner than a process started then.
"""

from __future__ import annotations

import logging
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from knative.platforms.local._procs import free_port, signal_group, spawn
from knative.platforms.local._records import (
    LocalSettings,
    RevisionSpec,
    serve_command,
    serve_env,
)

log = logging.getLogger(__name__)

INTERNAL_HEADER = "X-Surefoot-Internal"


class AdoptFailed(Exception):
    """A standby did not take over (it is then stopped; the replica starts from nothing)."""


@dataclass
class StandbyRecord:
    name: str
    revision: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    phase: str = "Starting"  # Starting | Loaded | CrashLoopBackOff
    models_ready: dict[str, bool] = field(default_factory=dict)
    restarts: int = 0
    restart_at: float = 0.0
    started: float = field(default_factory=time.time)
    loaded_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def adoptable(self) -> bool:
        """Some model is in: it serves that at once (the others as they load)."""
        return self.proc is not None and self.phase == "Loaded" and self.proc.poll() is None

    @property
    def complete(self) -> bool:
        return self.adoptable and all(self.models_ready.values())


class StandbyPool:
    """The standbys of every revision; the platform calls it under its own lock, except for
    :meth:`probe` and :meth:`adopt`, which do HTTP and touch one record each."""

    def __init__(self, settings: LocalSettings, log_dir: Path, token: str,
                 probe: httpx.Client, clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings
        self.log_dir = log_dir
        self.token = token
        self._http = probe
        self._clock = clock
        self.want = settings.standby  # per revision
        self._pool: dict[str, StandbyRecord] = {}
        self._stopping: list[subprocess.Popen[bytes]] = []  # discarded, not yet reaped
        self._refill_at: dict[str, float] = {}  # revision -> no new standby before (clock)
        self._held: dict[str, StandbyRecord] = {}  # replica -> its standby, taken loading

    def reconcile(self, specs: Mapping[str, RevisionSpec]) -> None:
        """Start standbys until each revision that runs replicas has ``want`` of them; stop
        those of revisions that are gone or scaled to zero, and those beyond ``want``."""
        kept: dict[str, int] = {}
        for sb in sorted(self._pool.values(), key=lambda s: (not s.complete, -s.started)):
            spec = specs.get(sb.revision)
            kept[sb.revision] = kept.get(sb.revision, 0) + 1
            if spec is None or spec.min_scale == 0 or kept[sb.revision] > self.want:
                self.discard(sb)
        now = self._clock()
        for spec in specs.values():
            if now < self._refill_at.get(spec.name, now):
                continue
            have = sum(1 for sb in self._pool.values() if sb.revision == spec.name)
            for _ in range(self.want - have if spec.min_scale > 0 else 0):
                name = f"{spec.name}-{secrets.token_hex(3)}"
                sb = StandbyRecord(name, spec.name, free_port())
                self._pool[name] = sb
                self._launch(sb, spec)

    def _launch(self, sb: StandbyRecord, spec: RevisionSpec) -> None:
        cmd = serve_command(self.s, spec, sb.name, sb.port, None, standby=True)
        sb.proc = spawn(cmd, serve_env(self.s, spec, self.token),
                        self.log_dir / f"{sb.name}.log", self.s.start_nice)
        sb.phase, sb.started, sb.loaded_at, sb.models_ready = "Starting", time.time(), None, {}
        log.info("standby %s (%s) started, pid %d, port %d", sb.name, sb.revision,
                 sb.proc.pid, sb.port)

    def step(self, specs: Mapping[str, RevisionSpec]) -> list[StandbyRecord]:
        """Reap the standbys that exited (restart with backoff); those to probe."""
        now = self._clock()
        to_probe = []
        self._reap()
        for sb in list(self._pool.values()):
            if sb.proc is not None and sb.proc.poll() is not None:
                code = sb.proc.returncode
                signal_group(sb.proc, signal.SIGKILL)  # a worker left behind goes too
                sb.proc, sb.phase, sb.loaded_at, sb.models_ready = (None, "CrashLoopBackOff",
                                                                    None, {})
                sb.restarts += 1
                backoff = min(self.s.crash_backoff * 2 ** (sb.restarts - 1),
                              self.s.crash_backoff_max)
                sb.restart_at = now + backoff
                log.warning("standby %s exited with %s (restart %d in %.1f s)", sb.name, code,
                            sb.restarts, backoff)
            elif sb.phase == "CrashLoopBackOff" and now >= sb.restart_at:
                spec = specs.get(sb.revision)
                if spec is not None:
                    self._launch(sb, spec)
            elif sb.phase == "Starting" or not sb.complete:
                to_probe.append(sb)
        return to_probe

    def probe(self, sb: StandbyRecord) -> None:
        """A standby is loaded when its probe says ``standby`` (a model is in); complete when
        every model is."""
        try:
            r = self._http.get(f"{sb.url}/readyz")
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return
        if isinstance(body, dict) and body.get("reason") == "standby" and sb.proc is not None:
            sb.models_ready = dict(body.get("models") or {})
            if sb.phase == "Starting":
                sb.phase = "Loaded"
            if sb.loaded_at is None and all(sb.models_ready.values()):
                sb.loaded_at = time.time()
                log.info("standby %s loaded in %.1f s", sb.name, sb.loaded_at - sb.started)

    def take(self, revision: str) -> StandbyRecord | None:
        """A standby of ``revision``, out of the pool (the caller adopts it once it is
        adoptable): a loaded one, else the one loading longest, whose head start beats a
        process started now; None when every one is down."""
        up = [sb for sb in self._pool.values() if sb.revision == revision
              and sb.proc is not None and sb.proc.poll() is None]
        if not up:
            return None
        sb = min(up, key=lambda s: (not s.adoptable, not s.complete, s.started))
        del self._pool[sb.name]
        self._refill_at[revision] = self._clock() + self.s.standby_refill_delay
        return sb

    def hold(self, replica: str, sb: StandbyRecord) -> None:
        """``sb``, taken while loading, adopts ``replica`` once loaded (:meth:`loaded`)."""
        self._held[replica] = sb

    def loaded(self, waits: Callable[[str, StandbyRecord], bool]) -> tuple[
            list[tuple[str, StandbyRecord]], list[StandbyRecord]]:
        """The held standbys now loaded, with their replicas (to adopt), and those still
        loading (to probe); one whose replica no longer ``waits`` for it is let go (its exit
        is the replica's)."""
        loaded, loading = [], []
        for replica, sb in list(self._held.items()):
            if not waits(replica, sb):
                del self._held[replica]
            elif sb.adoptable:
                del self._held[replica]
                log.info("standby %s loaded: takes over as %s", sb.name, replica)
                loaded.append((replica, sb))
            else:
                loading.append(sb)
        return loaded, loading

    def adopt(self, sb: StandbyRecord, replica: str, node: str) -> dict[str, Any]:
        """Hand ``sb`` the identity ``replica`` on ``node``; the standby's facts of it."""
        try:
            r = self._http.post(f"{sb.url}/admin/adopt", json={"replica": replica, "node": node},
                                headers={INTERNAL_HEADER: self.token},
                                timeout=self.s.adopt_timeout)
        except httpx.HTTPError as exc:
            raise AdoptFailed(f"{sb.name} did not answer the takeover: {exc}") from exc
        if r.status_code != 200:
            raise AdoptFailed(f"{sb.name} refused the takeover: HTTP {r.status_code} {r.text}")
        facts: dict[str, Any] = r.json()
        return facts

    def discard(self, sb: StandbyRecord) -> None:
        """Out of the pool, and stopped (SIGTERM; it has nothing in flight)."""
        self._pool.pop(sb.name, None)
        if sb.proc is not None and sb.proc.poll() is None:
            signal_group(sb.proc, signal.SIGTERM)
            self._stopping.append(sb.proc)
        sb.proc = None

    def _reap(self) -> None:
        for proc in list(self._stopping):
            if proc.poll() is not None:
                signal_group(proc, signal.SIGKILL)  # a worker left behind goes too
                self._stopping.remove(proc)

    def procs(self) -> list[subprocess.Popen[bytes]]:
        """Every standby process still running (those being stopped included)."""
        self._reap()
        return [sb.proc for sb in self._pool.values() if sb.proc and sb.proc.poll() is None] + [
            p for p in self._stopping if p.poll() is None]

    def names(self) -> list[str]:
        return list(self._pool)

    def status(self) -> list[dict[str, Any]]:
        return [{"name": sb.name, "revision": sb.revision, "phase": sb.phase,
                 "pid": sb.proc.pid if sb.proc else None, "url": sb.url,
                 "models_ready": dict(sb.models_ready), "restarts": sb.restarts,
                 "started": sb.started, "loaded_at": sb.loaded_at,
                 "log": str(self.log_dir / f"{sb.name}.log")}
                for sb in self._pool.values()]

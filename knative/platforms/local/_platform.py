"""The platform seam on one machine: replicas as real processes on simulated nodes.

``LocalPlatform`` does for ``surefoot up`` what Kubernetes and Knative do on a cluster, and no
more: a revision wants N replicas; each is a real ``surefoot serve`` process on a free port,
placed on a simulated node under required anti-affinity (at most one replica of a revision per
node; a replica that cannot be placed stays Pending). A supervisor restarts crashed replicas
with exponential backoff (CrashLoopBackOff), replaces deleted and evicted ones (they restore
from the shared checkpoint store), probes readiness, and emits the same lifecycle CloudEvents
as the cluster watcher. Eviction honours a disruption budget of one unavailable replica per
revision (HTTP 429's "not now", as the Eviction API answers).

With standbys (:mod:`knative.platforms.local._standby`) a lost replica's replacement is a
loaded process that takes over at once; placement is in :mod:`._placement`.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from events import (
    Event,
    NodeCordoned,
    NodeUncordoned,
    PodCrashLoop,
    PodDeleted,
    PodEvicted,
    PodNotReady,
    PodOomKilled,
    PodReady,
    PodRestarted,
    build,
)
from knative.platforms import (
    EvictionReport,
    Node,
    NotFound,
    PermanentPlatformError,
    Replica,
    Target,
    TooManyRequests,
    validate_traffic,
)
from knative.platforms.local._changes import Changes
from knative.platforms.local._placement import pending_reason, placeable
from knative.platforms.local._procs import (
    end_groups,
    free_port,
    renice_tree,
    signal_group,
    spawn,
)
from knative.platforms.local._records import (
    INTERNAL_TOKEN_ENV,
    LocalSettings,
    NodeRecord,
    ReplicaRecord,
    RevisionSpec,
    serve_command,
    serve_env,
)
from knative.platforms.local._standby import AdoptFailed, StandbyPool, StandbyRecord

log = logging.getLogger(__name__)

SOURCE = "surefoot/local-platform"

__all__ = ["LocalPlatform", "LocalSettings", "RevisionSpec", "renice_tree"]


class LocalPlatform:
    """Implements :class:`knative.Platform` with processes; call :meth:`start`, then
    :meth:`stop` (which leaves no process behind)."""

    def __init__(self, settings: LocalSettings, revisions: list[RevisionSpec],
                 traffic: Mapping[str, list[Target]], emit: Callable[[Event], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings.validate()
        self._specs = {r.name: r for r in revisions}
        self._traffic = {svc: list(t) for svc, t in traffic.items()}
        for targets in self._traffic.values():
            validate_traffic(targets)
        # simulated GPU nodes, labelled as the NVIDIA GPU operator labels real ones
        self._nodes = {
            f"node-{i}": NodeRecord(f"node-{i}", labels={
                "kubernetes.io/hostname": f"node-{i}", "nvidia.com/gpu.present": "true"})
            for i in range(1, settings.nodes + 1)
        }
        self._replicas: dict[str, ReplicaRecord] = {}
        self._history: list[dict[str, Any]] = []  # replicas that are gone, for timelines
        self._emit = emit or (lambda event: None)
        self._clock = clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe = httpx.Client(timeout=settings.probe_timeout,
                                   limits=httpx.Limits(max_connections=32))
        self._probers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self.log_dir = Path(settings.log_dir or Path.cwd() / ".surefoot" / "logs")
        env_token = settings.env.get(INTERNAL_TOKEN_ENV) or settings.base_env.get(
            INTERNAL_TOKEN_ENV, "")
        self._token = env_token or (secrets.token_urlsafe(16) if settings.standby else "")
        self._pool = StandbyPool(settings, self.log_dir, self._token, self._probe, clock)
        self._changes = Changes()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalPlatform:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._reconcile()
        self._thread = threading.Thread(target=self._run, name="local-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Terminate every replica (SIGTERM, then SIGKILL after the grace) and the supervisor."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        grace = self.settings.grace_seconds if timeout is None else timeout
        with self._lock:
            procs = [r.proc for r in self._replicas.values() if r.proc and r.proc.poll() is None]
            procs += self._pool.procs()
        left = end_groups(procs, grace)
        if left:
            log.warning("processes still running after stop: %s", left)
        self._probers.shutdown(wait=True)
        self._probe.close()

    def wait_ready(self, timeout: float, revisions: list[str] | None = None) -> bool:
        """Wait until every wanted replica of ``revisions`` (default all) is ready."""
        deadline = time.monotonic() + timeout
        names = revisions or list(self._specs)
        while time.monotonic() < deadline:
            with self._lock:
                ok = all(
                    sum(1 for r in self._replicas.values()
                        if r.revision == n and r.ready and r.phase == "Running")
                    >= self._specs[n].min_scale
                    for n in names
                )
            if ok:
                return True
            time.sleep(0.1)
        return False

    def wait_change(self, after: int, timeout: float) -> int:
        """The generation of what a gateway routes by (the replicas, their phase and readiness,
        the traffic): returned once it is not ``after``, else after ``timeout`` s."""
        return self._changes.wait(after, timeout)

    def _changed(self) -> None:
        with self._lock:
            self._changes.observe((tuple(r.view() for r in self._replicas.values()),
                                   tuple((s, tuple(t)) for s, t in self._traffic.items())))

    # --- the Platform protocol ---------------------------------------------------------------
    def replicas(self, service: str) -> list[Replica]:
        with self._lock:
            return [r.view() for r in self._replicas.values() if r.service == service]

    def traffic(self, service: str) -> list[Target]:
        with self._lock:
            if service not in self._traffic:
                raise NotFound(f"service {service!r} does not exist")
            return list(self._traffic[service])

    def set_traffic(self, service: str, targets: list[Target]) -> None:
        validate_traffic(targets)
        with self._lock:
            if service not in self._traffic:
                raise NotFound(f"service {service!r} does not exist")
            unknown = [t.revision for t in targets if t.revision not in self._specs]
            if unknown:
                raise PermanentPlatformError(f"traffic: unknown revisions {unknown}")
            self._traffic[service] = list(targets)
            self._changed()
        log.info("traffic of %s: %s", service,
                 ", ".join(f"{t.revision}={t.percent}%" for t in targets))

    def set_scale(self, service: str, revision: str, min_scale: int, max_scale: int) -> None:
        if min_scale < 0 or max_scale < max(min_scale, 1):
            raise PermanentPlatformError(
                f"scale: need 0 <= min ({min_scale}) <= max ({max_scale}), max >= 1")
        with self._lock:
            spec = self._spec(revision)
            if spec.service != service:
                raise NotFound(f"revision {revision!r} is not part of service {service!r}")
            self._specs[revision] = RevisionSpec(spec.name, spec.service, spec.tag, min_scale,
                                                 max_scale, spec.serve_args)
            self._reconcile()

    def set_standby(self, count: int) -> None:
        """Keep ``count`` loaded standbys per revision from now on (0 stops them)."""
        if count < 0:
            raise PermanentPlatformError(f"standby: must be 0 or more, got {count}")
        if count and not self._token:
            raise PermanentPlatformError(
                "standby: the platform was started without an internal token for standbys")
        with self._lock:
            self._pool.want = count
            self._reconcile()

    def delete_replica(self, name: str) -> None:
        with self._lock:
            r = self._replicas.get(name)
            if r is None:
                raise NotFound(f"replica {name!r} does not exist")
            if r.phase == "Terminating":
                return
            self._terminate(r, "deleted")
            self._emit_event(PodDeleted(
                namespace=self.settings.namespace, pod=r.name, node=r.node,
                revision=r.revision, service=r.service, terminating=True,
                grace_period_seconds=int(self.settings.grace_seconds)))
            self._reconcile()

    def nodes(self) -> list[Node]:
        with self._lock:
            return [Node(n.name, n.ready, n.unschedulable, dict(n.labels))
                    for n in self._nodes.values()]

    def cordon(self, node: str) -> None:
        with self._lock:
            n = self._node(node)
            if not n.unschedulable:
                n.unschedulable = True
                self._emit_event(NodeCordoned(node=node))

    def uncordon(self, node: str) -> None:
        with self._lock:
            n = self._node(node)
            if n.unschedulable:
                n.unschedulable = False
                self._emit_event(NodeUncordoned(node=node))
                self._reconcile()

    def label(self, node: str, key: str, value: str | None) -> None:
        with self._lock:
            n = self._node(node)
            if value is None:
                n.labels.pop(key, None)
            else:
                n.labels[key] = value

    def evict(self, node: str, timeout: float = 120.0) -> EvictionReport:
        """Evict every replica on ``node``, one disruption at a time per revision: a replica is
        evicted only while every other replica of its revision is ready (else 429, retried
        until ``timeout``)."""
        start = time.monotonic()
        with self._lock:
            self._node(node)
        evicted: list[str] = []
        while True:
            with self._lock:
                waiting = [r for r in self._replicas.values()
                           if r.node == node and r.phase != "Terminating"]
                for r in waiting:
                    if self._disruption_allowed(r):
                        self._terminate(r, "evicted")
                        evicted.append(r.name)
                        self._emit_event(PodEvicted(
                            namespace=self.settings.namespace, pod=r.name, reason="Evicted",
                            message=f"evicted from {node}", node=node, revision=r.revision,
                            service=r.service))
                self._reconcile()
                left = [r.name for r in self._replicas.values()
                        if r.node == node and r.phase != "Terminating"]
            if not left:
                return EvictionReport(node, tuple(evicted), (), (), time.monotonic() - start)
            if time.monotonic() - start >= timeout or self._stop.is_set():
                return EvictionReport(node, tuple(evicted), (), tuple(left),
                                      time.monotonic() - start)
            time.sleep(0.1)

    def evict_replica(self, name: str) -> None:
        """One Eviction API call: 429 (TooManyRequests) when the budget does not allow it."""
        with self._lock:
            r = self._replicas.get(name)
            if r is None:
                raise NotFound(f"replica {name!r} does not exist")
            if r.phase == "Terminating":
                return
            if not self._disruption_allowed(r):
                raise TooManyRequests(
                    f"evicting {name} would violate the disruption budget of {r.revision}")
            self._terminate(r, "evicted")
            self._emit_event(PodEvicted(
                namespace=self.settings.namespace, pod=r.name, reason="Evicted",
                node=r.node, revision=r.revision, service=r.service))
            self._reconcile()

    # --- status for the CLI and the drill ----------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "nodes": [{"name": n.name, "ready": n.ready, "unschedulable": n.unschedulable,
                           "labels": dict(n.labels)} for n in self._nodes.values()],
                "replicas": [self._describe(r) for r in self._replicas.values()],
                "revisions": [{"name": s.name, "service": s.service, "tag": s.tag,
                               "min_scale": s.min_scale, "max_scale": s.max_scale,
                               "serve_args": list(s.serve_args)}
                              for s in self._specs.values()],
                "traffic": {svc: [{"revision": t.revision, "percent": t.percent, "tag": t.tag}
                                  for t in ts] for svc, ts in self._traffic.items()},
                "history": list(self._history[-50:]),
                "start_nice": self.settings.start_nice,
                "cordoned": [n.name for n in self._nodes.values() if n.unschedulable],
                "standby": self._pool.status(),
            }

    def _describe(self, r: ReplicaRecord) -> dict[str, Any]:
        return {
            "name": r.name, "revision": r.revision, "service": r.service, "node": r.node,
            "phase": r.phase, "ready": r.ready, "pid": r.proc.pid if r.proc else None,
            "url": r.url if r.proc else None, "restarts": r.restarts,
            "reason": r.terminate_reason or r.pending_reason or None, "exit_code": r.exit_code,
            "created": r.created, "scheduled": r.scheduled, "started": r.started,
            "ready_at": r.ready_at, "terminating_at": r.terminating_at,
            "pending_reason": r.pending_reason or None,
            "standby": r.adopted_from or None,
            "log": str(self.log_dir / f"{r.log_name}.log"),
        }

    # --- internals ---------------------------------------------------------------------------
    def _spec(self, revision: str) -> RevisionSpec:
        try:
            return self._specs[revision]
        except KeyError:
            raise NotFound(f"revision {revision!r} does not exist") from None

    def _node(self, node: str) -> NodeRecord:
        try:
            return self._nodes[node]
        except KeyError:
            raise NotFound(
                f"node {node!r} does not exist (nodes: {', '.join(self._nodes)})") from None

    def _emit_event(self, payload: Any) -> None:
        try:
            self._emit(build(payload, source=SOURCE))
        except Exception:  # an event sink must never break the supervisor
            log.exception("could not emit %s", type(payload).__name__)

    def _disruption_allowed(self, r: ReplicaRecord) -> bool:
        if not r.ready:
            return True  # evicting a replica that is not serving costs no availability
        others = [o for o in self._replicas.values()
                  if o.revision == r.revision and o is not r and o.phase != "Terminating"]
        return all(o.ready for o in others)

    def _terminate(self, r: ReplicaRecord, reason: str, send: bool = True) -> None:
        r.phase = "Terminating"
        r.terminate_reason = reason
        r.terminating_at = time.time()
        r.kill_at = self._clock() + self.settings.grace_seconds
        was_ready, r.ready = r.ready, False
        self._changed()
        if send and r.proc is not None and r.proc.poll() is None:
            signal_group(r.proc, signal.SIGTERM)
        if was_ready:
            self._emit_event(PodNotReady(namespace=self.settings.namespace, pod=r.name,
                                         reason="Terminating", node=r.node,
                                         revision=r.revision, service=r.service))

    def _reconcile(self) -> None:
        if self._stop.is_set():  # stop() has taken its list of processes: start no more
            return
        for spec in self._specs.values():
            active = [r for r in self._replicas.values()
                      if r.revision == spec.name and r.phase != "Terminating"]
            want = max(spec.min_scale, 0)
            for _ in range(want - len(active)):
                name = f"{spec.name}-{secrets.token_hex(3)}"
                self._replicas[name] = ReplicaRecord(name, spec.name, spec.service)
            extra = len(active) - max(want, 0) if len(active) > spec.max_scale else 0
            for r in sorted(active, key=lambda r: (r.ready, -r.created))[:max(extra, 0)]:
                self._terminate(r, "scaled down")
            for r in list(self._replicas.values()):
                if r.revision == spec.name and r.phase == "Pending" and r.node is None:
                    self._place(r, spec)
        self._pool.reconcile(self._specs)

    def _place(self, r: ReplicaRecord, spec: RevisionSpec) -> None:
        nodes = placeable(self._nodes, self._replicas.values(), spec, self._specs)
        if not nodes:
            reason = pending_reason(self._nodes, self._replicas.values(), spec)
            if reason != r.pending_reason:
                log.warning("%s is Pending: %s", r.name, reason)
            r.pending_reason = reason
            return
        r.node = nodes[0].name
        r.pending_reason = ""
        r.scheduled = time.time()
        sb = self._pool.take(spec.name)
        if sb is None:
            self._launch(r)
        else:
            self._take_over(r, sb)

    def _take_over(self, r: ReplicaRecord, sb: StandbyRecord) -> None:
        """``sb`` becomes replica ``r`` (on ``r.node``): ready once it has adopted, which a
        standby still loading does when it is loaded (raised to the replicas' priority)."""
        r.proc, r.port, r.adopted_from = sb.proc, sb.port, sb.name
        r.started = time.time()
        r.phase, r.ready, r.exit_code = "Running", False, None
        log.info("standby %s%s takes over as %s (%s) on %s", sb.name,
                 "" if sb.adoptable else ", still loading,", r.name, r.revision, r.node)
        if sb.adoptable:
            self._probers.submit(self._adopt, r, sb)
            return
        if self.settings.start_nice and sb.proc is not None:
            renice_tree(sb.proc.pid, 0)
        self._pool.hold(r.name, sb)

    def _adopt_loaded(self) -> list[StandbyRecord]:
        """Adopt the standbys taken while loading that now are; those still to probe."""
        def waits(name: str, sb: StandbyRecord) -> bool:
            r = self._replicas.get(name)
            return r is not None and r.proc is sb.proc and r.phase == "Running"

        loaded, loading = self._pool.loaded(waits)
        for name, sb in loaded:
            self._probers.submit(self._adopt, self._replicas[name], sb)
        return loading

    def _adopt(self, r: ReplicaRecord, sb: StandbyRecord) -> None:
        assert r.node is not None
        try:
            facts = self._pool.adopt(sb, r.name, r.node)
        except AdoptFailed as exc:
            log.warning("%s; starting %s from nothing", exc, r.name)
            with self._lock:
                current = r.proc is sb.proc and r.phase == "Running"
                self._pool.discard(sb)
                if current and not self._stop.is_set():  # its port goes with it
                    r.proc, r.adopted_from, r.port = None, "", None
                    self._launch(r)
            return
        with self._lock:
            if r.proc is not sb.proc or r.phase != "Running":
                return  # lost again meanwhile
            log.info("%s ready: standby %s took over in %.3f s (checkpoint %s)", r.name,
                     sb.name, facts.get("seconds", 0.0), facts.get("checkpoint"))
            self._set_ready(r, True)

    def _launch(self, r: ReplicaRecord) -> None:
        s = self.settings
        spec = self._specs[r.revision]
        r.port = r.port or free_port()
        r.adopted_from = ""
        cmd = serve_command(s, spec, r.name, r.port, r.node)
        r.proc = spawn(cmd, serve_env(s, spec, self._token), self.log_dir / f"{r.name}.log",
                       s.start_nice)
        r.started = time.time()
        r.phase = "Running"
        r.ready = False
        r.exit_code = None
        log.info("started %s (%s) on %s, pid %d, port %d", r.name, r.revision, r.node,
                 r.proc.pid, r.port)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.tick):
            try:
                self._step()
            except Exception:  # the supervisor must keep running
                log.exception("supervisor step failed")

    def _step(self) -> None:
        now = self._clock()
        to_probe: list[ReplicaRecord] = []
        with self._lock:
            for r in list(self._replicas.values()):
                if r.proc is not None and r.proc.poll() is not None:
                    self._exited(r, now)
                elif r.phase == "Terminating" and r.proc is not None and now >= r.kill_at:
                    log.warning("%s did not exit within its grace period: SIGKILL", r.name)
                    signal_group(r.proc, signal.SIGKILL)
                elif r.phase == "Terminating" and r.proc is None:
                    self._forget(r)
                elif r.phase == "CrashLoopBackOff":
                    self._restart(r, now)
                elif r.phase == "Running":
                    to_probe.append(r)
            standbys = self._pool.step(self._specs) + self._adopt_loaded()
            self._reconcile()
            self._changed()
        # probed side by side: one wedged replica must not delay what the others report
        list(self._probers.map(self._probe_ready, to_probe))
        list(self._probers.map(self._pool.probe, standbys))

    def _restart(self, r: ReplicaRecord, now: float) -> None:
        """A crashed replica comes back: a standby takes its place at once, if there is one;
        else a new process when its backoff has run out."""
        sb = self._pool.take(r.revision)
        if sb is not None:
            self._take_over(r, sb)
        elif now >= r.restart_at:
            self._launch(r)

    def _exited(self, r: ReplicaRecord, now: float) -> None:
        assert r.proc is not None
        code = r.proc.returncode
        r.exit_code = code
        # The serve master is gone; a worker it left behind would keep the port (and answer
        # on it) until it notices: the whole process group goes with the master, as a
        # container's processes do.
        signal_group(r.proc, signal.SIGKILL)
        if r.phase == "Terminating":
            log.info("%s exited with %s after %s", r.name, code, r.terminate_reason)
            r.proc = None
            self._forget(r)
            return
        r.proc = None
        r.ready = False
        r.restarts += 1
        backoff = min(self.settings.crash_backoff * 2 ** (r.restarts - 1),
                      self.settings.crash_backoff_max)
        r.restart_at = now + backoff
        r.phase = "CrashLoopBackOff"
        log.warning("%s exited with %s (restart %d in %.1f s)", r.name, code, r.restarts,
                    backoff)
        self._restart(r, now)
        ns = self.settings.namespace
        if code == -signal.SIGKILL:
            self._emit_event(PodOomKilled(namespace=ns, pod=r.name, container="serve",
                                          node=r.node, revision=r.revision, service=r.service))
        self._emit_event(PodRestarted(namespace=ns, pod=r.name, container="serve",
                                      restart_count=r.restarts, node=r.node,
                                      revision=r.revision, service=r.service))
        if r.restarts >= self.settings.crashloop_after:
            self._emit_event(PodCrashLoop(namespace=ns, pod=r.name, container="serve",
                                          restart_count=r.restarts,
                                          message=f"exit code {code}", node=r.node,
                                          revision=r.revision, service=r.service))

    def _forget(self, r: ReplicaRecord) -> None:
        self._replicas.pop(r.name, None)
        d = self._describe(r)
        d["gone"] = time.time()
        self._history.append(d)

    def _probe_ready(self, r: ReplicaRecord) -> None:
        url = r.url
        if url is None:
            return
        reason = None
        try:
            resp = self._probe.get(f"{url}/readyz")
            ok = resp.status_code == 200
            if not ok:
                reason = _reason(resp)
        except httpx.HTTPError:
            ok = False
        with self._lock:
            if r.phase != "Running" or reason == "standby":
                return  # a standby still taking over: its adoption says when it is ready
            if reason == "draining" and self.settings.standby:
                # A replica that drains (a SIGTERM from outside) never serves again: replaced
                # now, by a standby, rather than after its drain.
                self._terminate(r, "draining", send=False)
                self._reconcile()
                return
            self._set_ready(r, ok)

    def _set_ready(self, r: ReplicaRecord, ok: bool) -> None:
        if r.ready == ok:
            return
        r.ready = ok
        ns = self.settings.namespace
        if ok:
            r.ready_at = time.time()
            if self.settings.start_nice and r.proc is not None:
                renice_tree(r.proc.pid, 0)
        self._changed()  # the gateways learn of it now, not at their next poll
        if ok:
            self._emit_event(PodReady(namespace=ns, pod=r.name, node=r.node,
                                      revision=r.revision, service=r.service))
        else:
            self._emit_event(PodNotReady(namespace=ns, pod=r.name, reason="ReadinessProbe",
                                         node=r.node, revision=r.revision, service=r.service))


def _reason(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None

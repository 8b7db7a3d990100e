"""Runs the replica app under gunicorn, with the drain Knative needs on SIGTERM.

One gunicorn worker holds the one model instance (it loads after the fork, so probes answer
while it loads). gthread threads are bounded: the admission capacity plus headroom for probes
and fast refusals. On SIGTERM the arbiter forwards the signal to the worker, where our handler
(not gunicorn's) turns readiness false, keeps answering (503 for new work, so a router retries
elsewhere), lets in-flight requests and streams finish, runs the drain hooks and only then lets
the worker exit; the arbiter then exits 0.

A standby (``standby`` in the settings) loads its models the same way but restores no
checkpoint and watches no node until it adopts a lost replica's identity
(:mod:`knative.serving._standby`); then it does both, and serves.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from checkpoint_store import CheckpointSettings, open_store
from knative.serving._app import create_app, runtime_of
from knative.serving._backends import ModelLoadError
from knative.serving._checkpoint import attach as attach_checkpoints
from knative.serving._quarantine import NodeBreakerWatch
from knative.serving._runtime import Runtime, load_models
from knative.serving._settings import ServeSettings
from knative.serving._standby import Standby, warm_up

if TYPE_CHECKING:
    from knative.breakers import BreakerRegistrySettings

log = logging.getLogger(__name__)

# gunicorn halts the whole server (no respawn loop) when a worker exits with this code.
WORKER_BOOT_ERROR = 3

AppHook = Callable[[Flask, Runtime], None]


class _ReplicaServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: ServeSettings, on_app: AppHook | None,
                 breakers: BreakerRegistrySettings | None) -> None:
        self.settings = settings
        self.on_app = on_app
        self.breakers = breakers
        self.started = time.time()
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        cfg = {
            "bind": f"{s.host}:{s.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": s.queue_capacity + 8,
            "worker_connections": 4 * (s.queue_capacity + 8),
            "backlog": 256,
            "keepalive": 5,
            "timeout": 0,  # generation can be long; liveness is the probe's job
            "graceful_timeout": int(s.grace_seconds) + 10,
            "accesslog": None,
            "control_socket_disable": True,
            "loglevel": s.log_level.lower(),
            "post_worker_init": self._post_worker_init,
            "proc_name": f"surefoot-serve {s.replica or s.revision}",
        }
        for key, value in cfg.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        app = create_app(self.settings)
        rt = runtime_of(app)
        rt.phases["process_started"] = self.started
        self.checkpoints = None
        if self.settings.checkpoint_dir:
            store = open_store(CheckpointSettings(
                directory=Path(self.settings.checkpoint_dir), keep=self.settings.checkpoint_keep))
            self.checkpoints = attach_checkpoints(app, rt, store)
        if self.settings.standby:
            standby = Standby(rt)
            standby.hooks.append(self._take_over)
            app.register_blueprint(standby.blueprint())
        if self.on_app:
            self.on_app(app, rt)
        self._app = app
        return app

    def _take_over(self) -> dict[str, Any]:
        """What a standby does as it adopts an identity: the revision's latest checkpoint
        (engine state included), the checkpoint timer, the node's breaker watch."""
        rt = runtime_of(self._app)
        facts: dict[str, Any] = {"checkpoint": None}
        cps = self.checkpoints
        if cps is not None:
            restored = cps.restore_state()
            if restored is not None:
                facts["checkpoint"] = restored.id
                facts["state_restored"] = "state_restored" in rt.phases
            cps.start_timer(self.settings.checkpoint_interval)
        self._watch_node(rt)
        return facts

    def _watch_node(self, rt: Runtime) -> None:
        node = rt.settings.node
        if self.breakers is not None and node:
            watch = NodeBreakerWatch(self.breakers, node)
            rt.quarantine_check = watch.reason
            watch.start()

    def _post_worker_init(self, worker: Any) -> None:
        rt = runtime_of(self._app)
        grace = self.settings.grace_seconds

        def drain_then_exit() -> None:
            rt.drain(grace)
            log.info("drained; exiting")
            worker.alive = False

        def on_term(signum: int, frame: Any) -> None:
            if not rt.draining:
                threading.Thread(target=drain_then_exit, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)

        cps = self.checkpoints

        def loader() -> None:
            try:
                if self.settings.standby:  # it restores when it takes over
                    load_models(rt, after=lambda: warm_up(rt))
                elif cps is None:
                    load_models(rt)
                else:
                    load_models(rt, cps.restore_before_load, cps.restore_after_load)
                    cps.start_timer(self.settings.checkpoint_interval)
                if not self.settings.standby:
                    self._watch_node(rt)
            except ModelLoadError:
                # A replica without its model can never become ready: exit so the supervisor
                # (or the kubelet) sees a crash, with gunicorn's "do not respawn" code.
                logging.shutdown()
                os._exit(WORKER_BOOT_ERROR)

        if not rt.loaded.is_set():
            threading.Thread(target=loader, name="model-loader", daemon=True).start()


def serve(settings: ServeSettings, on_app: AppHook | None = None, *,
          breakers: BreakerRegistrySettings | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code. With ``breakers`` (and a
    ``node`` in the settings), readiness follows the node's breaker."""
    _ReplicaServer(settings, on_app, breakers).run()
    return 0

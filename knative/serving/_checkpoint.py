"""A replica's checkpoints: restore at start, snapshot on a timer, on request and on SIGTERM.

A replacement replica (after a crash, a deleted pod, an evicted node) comes back from the latest
valid checkpoint of its model and revision: the model file by content hash from the store (no
download, verified as it is read) and the engine's runtime state. The snapshot function of
Surefoot asks for a snapshot through ``POST /admin/snapshot``; the drain on SIGTERM takes one
last snapshot after the in-flight requests finish.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from checkpoint_store import (
    CheckpointError,
    CheckpointStore,
    Manifest,
    Restored,
    StorageFull,
)
from knative.serving._backends import BackendError, LlamaCppBackend
from knative.serving._runtime import Runtime

log = logging.getLogger(__name__)

MODEL_FILE = "model.gguf"


class ReplicaCheckpoints:
    """Binds one replica runtime to a checkpoint store."""

    def __init__(self, runtime: Runtime, store: CheckpointStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.rt = runtime
        self.store = store
        self.clock = clock
        self.restored: Restored | None = None
        self.last: Manifest | None = None
        self._snap_lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    @property
    def _gen(self) -> LlamaCppBackend | None:
        gen = self.rt.generation
        return gen if isinstance(gen, LlamaCppBackend) else None

    @property
    def model_id(self) -> str:
        return self.rt.generation.model_id if self.rt.generation else "none"

    # --- start ------------------------------------------------------------------------------
    def restore_before_load(self) -> Restored | None:
        """Find the latest valid checkpoint of this model and revision; point the backend at
        its verified model file. Runs before the model loads."""
        start = time.perf_counter()
        try:
            restored = self.store.restore_latest(self.model_id, self.rt.settings.revision)
        except CheckpointError as exc:
            log.warning("no checkpoint restored: %s", exc)
            return None
        seconds = time.perf_counter() - start
        self.rt.phases["checkpoint_restored"] = self.clock()
        if restored is None:
            log.info("no valid checkpoint for %s@%s: starting fresh", self.model_id,
                     self.rt.settings.revision)
            return None
        self.restored = restored
        self.last = restored.manifest
        gen = self._gen
        model_file = restored.model_files.get(MODEL_FILE)
        if gen is not None and model_file is not None:
            gen.model = str(model_file)
        self.rt.metrics.restore_seconds.set(seconds)
        log.info("restored checkpoint %s in %.3f s (%d bytes verified)", restored.id, seconds,
                 restored.bytes_verified)
        return restored

    def restore_state(self) -> Restored | None:
        """A standby taking over: the revision's latest checkpoint, its engine state put back.

        The model is loaded already (the same model id, resolved and checked when the process
        started), so the checkpoint's copy of the model file is not read again: only the
        state blobs are, verified. The engine state is checked against the loaded model."""
        start = time.perf_counter()
        try:
            restored = self.store.restore_latest(self.model_id, self.rt.settings.revision,
                                                 verify_model_files=False)
        except CheckpointError as exc:
            log.warning("no checkpoint restored: %s", exc)
            return None
        self.rt.phases["checkpoint_restored"] = self.clock()
        if restored is None:
            log.info("no valid checkpoint for %s@%s: serving with a cold cache", self.model_id,
                     self.rt.settings.revision)
            return None
        self.restored = restored
        self.last = restored.manifest
        self.rt.metrics.restore_seconds.set(time.perf_counter() - start)
        self.restore_after_load()
        log.info("took over checkpoint %s in %.3f s", restored.id, time.perf_counter() - start)
        return restored

    def restore_after_load(self) -> None:
        """Put the engine's runtime state back, once the model is loaded."""
        gen = self._gen
        if self.restored is None or gen is None or "llama_state" not in self.restored.blobs:
            return
        try:
            gen.load_state(self.restored.blobs)
            self.rt.phases["state_restored"] = self.clock()
        except BackendError as exc:
            log.warning("engine state of checkpoint %s not restored: %s", self.restored.id, exc)

    # --- snapshots --------------------------------------------------------------------------
    def snapshot(self, reason: str) -> Manifest:
        """Write a checkpoint of the current serving state (one at a time per replica)."""
        with self._snap_lock:
            start = time.perf_counter()
            gen = self._gen
            blobs: dict[str, bytes] = {}
            model_files: dict[str, Path] = {}
            if gen is not None and self.rt.model_ready(gen.model_id):
                blobs = gen.save_state()
                if gen.model_path is not None:
                    model_files[MODEL_FILE] = gen.model_path
            s = self.rt.settings
            state: dict[str, Any] = {
                "reason": reason, "replica": s.replica, "node": s.node, "n_ctx": s.n_ctx,
                "models": self.rt.served_models(),
            }
            manifest = self.store.snapshot(
                model_id=self.model_id, revision=s.revision, state=state, blobs=blobs,
                model_files=model_files, parent=self.last.id if self.last else None,
                producer={"surefoot-replica": s.replica or "unnamed"},
            )
            self.last = manifest
            seconds = time.perf_counter() - start
            log.info("checkpoint %s saved (%s) in %.3f s", manifest.id, reason, seconds)
            return manifest

    def start_timer(self, interval: float) -> None:
        if interval <= 0 or self._timer is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                if self.rt.draining:
                    return
                try:
                    self.snapshot("timer")
                except (CheckpointError, BackendError) as exc:
                    log.warning("timed checkpoint failed: %s", exc)

        self._timer = threading.Thread(target=loop, name="checkpoint-timer", daemon=True)
        self._timer.start()

    def stop_timer(self) -> None:
        self._stop.set()

    def on_drain(self) -> None:
        self.stop_timer()
        # a standby's state is nobody's: it must not become its revision's latest checkpoint
        if (not self.rt.settings.snapshot_on_exit or self.rt.standby
                or not self.rt.loaded.is_set()):
            return
        try:
            self.snapshot("sigterm")
        except (CheckpointError, BackendError) as exc:
            log.error("checkpoint on exit failed: %s", exc)

    # --- HTTP -------------------------------------------------------------------------------
    def blueprint(self) -> Blueprint:
        bp = Blueprint("checkpoints", __name__)
        bp.add_url_rule("/admin/snapshot", view_func=self.admin_snapshot, methods=["POST"])
        return bp

    def register(self, app: Flask) -> None:
        app.register_blueprint(self.blueprint())

    def admin_snapshot(self) -> tuple[Response, int]:
        """``POST /admin/snapshot``: a checkpoint now (bearer token when one is set)."""
        refused = self._refusal(request.headers.get("Authorization", ""))
        if refused is not None:
            return refused
        start = time.perf_counter()
        try:
            m = self.snapshot("request")
        except CheckpointError as exc:
            status = 507 if isinstance(exc, StorageFull) else 500
            return jsonify({"error": f"snapshot failed: {exc}"}), status
        return jsonify({"id": m.id, "seconds": round(time.perf_counter() - start, 4),
                        "model_id": m.model_id, "revision": m.revision}), 201

    def _refusal(self, given: str) -> tuple[Response, int] | None:
        token = self.rt.settings.admin_token
        if token:
            if not given:
                return jsonify({"error": "Authorization: bearer token required"}), 401
            if not hmac.compare_digest(given, f"Bearer {token}"):
                return jsonify({"error": "Authorization: wrong token"}), 403
        if not self.rt.loaded.is_set():
            return jsonify({"error": "model not loaded yet"}), 409
        if self.rt.standby:
            return jsonify({"error": "a standby has no serving state to snapshot"}), 409
        return None


def attach(app: Flask, runtime: Runtime, store: CheckpointStore) -> ReplicaCheckpoints:
    """Wire checkpoints into a replica: route, drain hook; restore/timer are the loader's."""
    cps = ReplicaCheckpoints(runtime, store)
    cps.register(app)
    runtime.drain_hooks.append(cps.on_drain)
    return cps

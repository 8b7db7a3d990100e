"""The checkpoint store: snapshot, verify, restore, prune and back up serving state.

A checkpoint is a directory-like prefix ``checkpoints/<id>/`` holding its blobs and, written last,
its manifest. Model files are content-addressed under ``objects/`` and shared by every checkpoint
that names them, so a multi-gigabyte model is copied once, not every five minutes.

Why it is safe:
- every object is written by the backend's atomic, durable ``put``; the manifest is committed
  last, create-only; a checkpoint without a manifest does not exist;
- every read checks size and xxh3-128 over the bytes as they are read (sha256 on request), so a
  flipped byte or a truncated blob is caught before any of its data is used; ``latest`` and
  ``restore_latest`` skip a bad checkpoint with a warning and fall back to the previous one;
- writers (and readers) hold the store's shared lock; prune and cleaning take it exclusively, so
  they never delete a checkpoint that is still being written, and ids are unique (time plus 48
  random bits), so two processes snapshotting at once never touch the same files;
- nothing is ever unpickled: tensors are safetensors, state is JSON, blobs are opaque bytes.

Why it is fast: tensors are written straight from their own memory and restored as zero-copy
views over a private memory map of the file (a preallocated buffer for backends without maps),
the checksum computed over the mapped bytes as they are first touched.

This module is the store's API and the order of its steps (locks, commit, what is known good);
the steps themselves live beside it: checking a snapshot's arguments (``_snapshot``), reading
blobs back (``_reading``, ``_restore``), model files (``_objects``) and retention
(``_retention``).
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpoint_store._backend import Backend, BufferLike
from checkpoint_store._errors import (
    BlobNotFound,
    CheckpointError,
    CheckpointNotFound,
    CorruptCheckpoint,
    InvalidManifest,
    StorageError,
    StoreBusy,
)
from checkpoint_store._filesystem import FilesystemBackend
from checkpoint_store._hashing import Digest, hashed
from checkpoint_store._legacy import load_legacy_pt
from checkpoint_store._manifest import (
    KIND_BLOB,
    KIND_MODEL_FILE,
    KIND_STATE,
    KIND_TENSORS,
    STATE_NAME,
    TENSORS_NAME,
    BlobEntry,
    Manifest,
    blob_key,
    manifest_key,
    new_checkpoint_id,
    to_json,
)
from checkpoint_store._objects import ModelFiles
from checkpoint_store._reading import (
    Framework,
    check_blob,
    committed_ids,
    read_manifest,
    structure_problems,
    verified_chunks,
)
from checkpoint_store._reports import BlobProblem, PruneReport, Restored, VerifyReport
from checkpoint_store._restore import RestoreOptions, load
from checkpoint_store._retention import clean, discard, retain
from checkpoint_store._snapshot import (
    BlobData,
    SnapshotInputs,
    chunked,
    prepare,
    producer_versions,
)

logger = logging.getLogger(__name__)

CheckpointRef = str | Manifest
_ObjectCache = dict[str, tuple[BlobProblem | None, int]]


class CheckpointStore:
    """Checkpoints of serving state in one backend.

    ``keep``: how many checkpoints per model id ``prune`` keeps (None: keep all; every snapshot
    prunes afterwards when it can take the lock without waiting). The newest valid checkpoint of
    a model is always kept, even if newer ones are corrupt. ``sha256``: also record sha256 of
    every blob. ``clock``: seconds since the epoch, for ids and created times.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        keep: int | None = 3,
        sha256: bool = False,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = 60.0,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError("keep must be at least 1 (or None to keep everything)")
        self.backend = backend
        self.keep = keep
        self.sha256 = sha256
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._model_files = ModelFiles(backend)
        self._known_good: set[str] = set()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.backend!r}, keep={self.keep})"

    # -- reading manifests ---------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of every committed checkpoint (valid or not), newest first."""
        return committed_ids(self.backend)

    def manifest(self, checkpoint_id: str) -> Manifest:
        """The manifest of ``checkpoint_id``; ``CheckpointNotFound`` or ``InvalidManifest``."""
        return read_manifest(self.backend, checkpoint_id)

    def list(self, model_id: str | None = None, revision: str | None = None) -> list[Manifest]:
        """Checkpoints whose manifests parse, newest first; invalid ones are logged and left out.
        Blobs are not checked here (see ``verify`` and ``latest``)."""
        out: list[Manifest] = []
        for cid in self.ids():
            try:
                m = self.manifest(cid)
            except InvalidManifest as exc:
                logger.warning("skipping checkpoint %s: %s", cid, exc)
                continue
            except CheckpointNotFound:
                continue  # pruned meanwhile
            if model_id is not None and m.model_id != model_id:
                continue
            if revision is not None and m.revision != revision:
                continue
            out.append(m)
        return out

    def _resolve(self, ref: CheckpointRef) -> Manifest:
        return ref if isinstance(ref, Manifest) else self.manifest(ref)

    def _candidates(self, model_id: str | None, revision: str | None) -> Iterator[Manifest]:
        yield from self.list(model_id, revision)

    # -- verification --------------------------------------------------------------------------

    def verify(self, ref: CheckpointRef, *, sha256: bool = True) -> VerifyReport:
        """Check every blob of a checkpoint; the report lists every bad blob (never raises for
        bad data; ``CheckpointNotFound`` for an unknown id). sha256 is checked where recorded."""
        return self._verify(ref, sha256=sha256, object_cache={})

    def _verify(
        self, ref: CheckpointRef, *, sha256: bool, object_cache: _ObjectCache
    ) -> VerifyReport:
        started = time.perf_counter()
        cid = ref.id if isinstance(ref, Manifest) else ref
        try:
            m = self._resolve(ref)
        except InvalidManifest as exc:
            return VerifyReport(
                cid, None, (), tuple(exc.problems), 0, time.perf_counter() - started
            )
        problems: list[BlobProblem] = []
        checked = 0
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            for entry in m.blobs:
                problem, n = self._check_entry(m, entry, sha256, object_cache)
                checked += n
                if problem is not None:
                    problems.append(problem)
        if not problems:
            self._known_good.add(m.id)
        return VerifyReport(m.id, m, tuple(problems), (), checked, time.perf_counter() - started)

    def _check_entry(
        self, m: Manifest, entry: BlobEntry, sha256: bool, object_cache: _ObjectCache
    ) -> tuple[BlobProblem | None, int]:
        """One blob's problem and the bytes read for it (a shared model file is read once)."""
        key = m.key_of(entry)
        if entry.kind == KIND_MODEL_FILE and key in object_cache:
            return object_cache[key][0], 0
        problem, n = check_blob(self.backend, key, entry, sha256)
        if entry.kind == KIND_MODEL_FILE:
            object_cache[key] = (problem, n)
        return problem, n

    def verify_all(self, *, sha256: bool = True) -> builtins.list[VerifyReport]:
        """``verify`` every committed checkpoint, newest first (shared model files read once)."""
        cache: _ObjectCache = {}
        reports = []
        for cid in self.ids():
            try:
                reports.append(self._verify(cid, sha256=sha256, object_cache=cache))
            except CheckpointNotFound:
                continue
        return reports

    def latest(
        self, model_id: str | None = None, revision: str | None = None, *, verify: bool = True
    ) -> Manifest | None:
        """The newest checkpoint whose blobs all verify (``verify=False``: whose blobs all exist
        with the right sizes); torn or corrupt ones are skipped with a warning. To restore, call
        ``restore_latest`` instead: it verifies while restoring, reading the data once."""
        for m in self._candidates(model_id, revision):
            if verify:
                report = self.verify(m, sha256=False)
                problems = report.describe()
            else:
                problems = [str(p) for p in structure_problems(self.backend, m)]
            if not problems:
                return m
            logger.warning("skipping checkpoint %s: %s", m.id, "; ".join(problems))
        return None

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(
        self,
        *,
        model_id: str,
        revision: str,
        tensors: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        blobs: Mapping[str, BlobData] | None = None,
        model_files: Mapping[str, str | os.PathLike[str]] | None = None,
        parent: str | None = None,
        producer: Mapping[str, str] | None = None,
    ) -> Manifest:
        """Write a checkpoint durably and return its manifest.

        ``tensors``: numpy arrays or torch tensors, stored as one safetensors file. ``state``:
        JSON-serialisable mapping. ``blobs``: opaque bytes by name (e.g. llama.cpp state).
        ``model_files``: files by name, stored once by content hash and referenced. Raises
        ``InvalidSnapshot`` (every bad argument listed), ``StorageFull`` / ``StorageError``
        (nothing committed; earlier checkpoints untouched) or ``StoreBusy``.
        """
        inputs = prepare(
            model_id=model_id,
            revision=revision,
            parent=parent,
            tensors=tensors,
            state=state,
            blobs=blobs,
            model_files=model_files,
            hash_file=lambda path: self._model_files.hash(path, sha256=self.sha256),
        )
        now = self._clock()
        cid = new_checkpoint_id(now)
        started = time.perf_counter()
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            try:
                manifest = Manifest(
                    id=cid,
                    created=datetime.fromtimestamp(now, UTC),
                    model_id=model_id,
                    revision=revision,
                    parent=parent,
                    producer=producer_versions(producer),
                    blobs=tuple(self._write_blobs(cid, inputs)),
                )
                self.backend.commit(manifest_key(cid), to_json(manifest))
            except BaseException:
                discard(self.backend, cid)
                raise
        self._known_good.add(cid)
        logger.info(
            "checkpoint %s of %s@%s: %d bytes in %.3f s",
            cid,
            model_id,
            revision,
            manifest.size,
            time.perf_counter() - started,
        )
        if self.keep is not None:
            self._auto_prune()
        return manifest

    def _write_blobs(self, cid: str, inputs: SnapshotInputs) -> builtins.list[BlobEntry]:
        """Every blob of the snapshot, stored; their manifest entries."""
        entries = [
            self._model_files.store(name, path, hashes, sha256=self.sha256)
            for name, (path, hashes) in inputs.model_files.items()
        ]
        if inputs.plan is not None:
            entries.append(self._put(cid, KIND_TENSORS, TENSORS_NAME, inputs.plan.chunks()))
        if inputs.state is not None:
            entries.append(self._put(cid, KIND_STATE, STATE_NAME, [inputs.state]))
        for name, view in inputs.blobs.items():
            entries.append(self._put(cid, KIND_BLOB, name, chunked(view)))
        return entries

    def _put(self, cid: str, kind: str, name: str, chunks: Iterable[BufferLike]) -> BlobEntry:
        digest = Digest(sha256=self.sha256)
        probe = BlobEntry(kind=kind, name=name, size=0, xxh3_128="0" * 32)
        size = self.backend.put(blob_key(cid, probe), hashed(chunks, digest))
        return BlobEntry(kind, name, size, digest.xxh3_128, digest.sha256)

    def import_legacy_pt(
        self,
        path: str | os.PathLike[str],
        *,
        model_id: str,
        revision: str,
        parent: str | None = None,
    ) -> Manifest:
        """Snapshot a legacy ``torch.save`` state dict, loaded with ``weights_only=True`` only
        (never unpickling code): tensors become safetensors, plain values JSON state."""
        tensors, state = load_legacy_pt(path)
        return self.snapshot(
            model_id=model_id,
            revision=revision,
            tensors=tensors,
            state={"legacy_import": os.fspath(path), "values": state},
            parent=parent,
            producer={"imported_from": "torch.save"},
        )

    # -- restore --------------------------------------------------------------------------------

    def restore(
        self,
        ref: CheckpointRef,
        *,
        framework: Framework = "auto",
        sha256: bool = False,
        verify_model_files: bool = True,
        model_dir: str | os.PathLike[str] | None = None,
    ) -> Restored:
        """Load a checkpoint, verifying every byte as it is read; ``CorruptCheckpoint`` names
        the bad blob. ``framework``: tensors as numpy arrays or torch tensors (``auto``: as they
        were given to ``snapshot``). ``sha256``: also check sha256 where recorded.
        ``model_files`` are paths into the store; for a backend without local files they are
        copied (verified) into ``model_dir`` once and reused from there."""
        started = time.perf_counter()
        m = self._resolve(ref)
        options = RestoreOptions(framework, sha256, verify_model_files, model_dir)
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            try:
                loaded = load(m, self._model_files, options)
            except CorruptCheckpoint as exc:
                raise CorruptCheckpoint(m.id, exc.problems) from None
            except BlobNotFound as exc:
                raise CorruptCheckpoint(m.id, [f"{exc.key}: blob is missing"]) from None
            except StorageError as exc:
                if exc.errno is None:  # a refused path (symlink, outside the store)
                    raise CorruptCheckpoint(m.id, [str(exc)]) from None
                raise
        seconds = time.perf_counter() - started
        self._known_good.add(m.id)
        logger.info(
            "restored checkpoint %s (%d bytes verified) in %.3f s", m.id, loaded.verified, seconds
        )
        return Restored(
            m,
            loaded.tensors,
            loaded.state,
            loaded.blobs,
            loaded.model_files,
            seconds,
            loaded.verified,
        )

    def restore_latest(
        self,
        model_id: str | None = None,
        revision: str | None = None,
        *,
        framework: Framework = "auto",
        sha256: bool = False,
        verify_model_files: bool = True,
        model_dir: str | os.PathLike[str] | None = None,
    ) -> Restored | None:
        """Restore the newest checkpoint that verifies, reading each candidate once; corrupt
        ones are skipped with a warning. None if the store has no valid checkpoint."""
        for m in self._candidates(model_id, revision):
            problems = structure_problems(self.backend, m)
            if problems:
                logger.warning(
                    "skipping checkpoint %s: %s", m.id, "; ".join(str(p) for p in problems)
                )
                continue
            try:
                return self.restore(
                    m,
                    framework=framework,
                    sha256=sha256,
                    verify_model_files=verify_model_files,
                    model_dir=model_dir,
                )
            except CorruptCheckpoint as exc:
                logger.warning("skipping checkpoint %s: %s", m.id, "; ".join(exc.problems))
            except CheckpointNotFound:
                continue
        return None

    def restore_to(
        self, ref: CheckpointRef, directory: str | os.PathLike[str], *, sha256: bool = False
    ) -> builtins.list[Path]:
        """Write a checkpoint out as plain files in ``directory`` (manifest.json,
        tensors.safetensors, state.json, blobs/NAME, model_files/NAME), every byte verified on
        the way; a corrupt blob raises ``CorruptCheckpoint`` and leaves no file for it."""
        m = self._resolve(ref)
        out = FilesystemBackend(directory, create=True)
        written: list[Path] = []
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            for entry in m.blobs:
                rel = {
                    KIND_MODEL_FILE: f"model_files/{entry.name}",
                    KIND_BLOB: f"blobs/{entry.name}",
                }.get(entry.kind, entry.name)
                try:
                    out.put(rel, verified_chunks(self.backend, m, entry, sha256))
                except BlobNotFound as exc:
                    raise CorruptCheckpoint(m.id, [f"{exc.key}: blob is missing"]) from None
                written.append(out.root / rel)
        out.put("manifest.json", [to_json(m)])
        written.append(out.root / "manifest.json")
        return written

    # -- retention, cleaning, backup ------------------------------------------------------------

    def _is_valid(self, m: Manifest) -> bool:
        if m.id in self._known_good:
            return True
        return not structure_problems(self.backend, m) and self.verify(m, sha256=False).ok

    def prune(self, *, keep: int | None = None, timeout: float | None = None) -> PruneReport:
        """Apply retention, then clean up.

        Retention keeps the newest ``keep`` (default: the store's) checkpoints per model id plus
        the newest valid one, and removes the rest; it runs beside writers (it only touches
        committed checkpoints). Cleaning removes stale temp files, torn checkpoints (no
        manifest) and model files no checkpoint names; it needs the exclusive lock (no writer in
        flight) and waits up to ``timeout`` s for it, else it is skipped (``cleaned`` False).
        """
        keep = keep if keep is not None else self.keep
        if keep is not None and keep < 1:
            raise ValueError("keep must be at least 1")
        timeout = self._lock_timeout if timeout is None else timeout
        removed: list[str] = []
        if keep is not None:
            with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
                removed, kept = retain(self.backend, keep, self._is_valid)
        else:
            kept = self.ids()
        self._known_good.difference_update(removed)
        torn: list[str] = []
        temp_removed = 0
        objects: list[str] = []
        cleaned = True
        try:
            with self.backend.lock(exclusive=True, timeout=timeout):
                torn, temp_removed, objects = clean(self.backend)
        except StoreBusy:
            cleaned = False
            logger.debug("cleaning of %s deferred: a writer is busy", self.backend.describe())
        for key in objects:
            self._model_files.forget(key)
        report = PruneReport(
            tuple(sorted(removed, reverse=True)),
            tuple(sorted(set(kept) - set(torn), reverse=True)),
            tuple(torn),
            len(objects),
            temp_removed,
            cleaned,
        )
        self._log_prune(report)
        return report

    def _log_prune(self, r: PruneReport) -> None:
        if r.removed or r.torn_removed or r.temp_removed or r.objects_removed:
            logger.info(
                "pruned %s: removed %d checkpoints, %d torn, %d temp files, %d model files",
                self.backend.describe(),
                len(r.removed),
                len(r.torn_removed),
                r.temp_removed,
                r.objects_removed,
            )

    def _auto_prune(self) -> None:
        try:
            self.prune(timeout=0)
        except CheckpointError as exc:
            logger.warning("prune after snapshot failed: %s", exc)

    def backup(
        self,
        dest: CheckpointStore,
        *,
        model_id: str | None = None,
        revision: str | None = None,
    ) -> Manifest:
        """Copy the newest valid checkpoint to ``dest`` (verifying every byte on the way; a
        corrupt one is skipped for the previous). Model files already in ``dest`` are not
        copied again. Returns the manifest now in ``dest``; ``CheckpointNotFound`` if none."""
        if dest.backend.describe() == self.backend.describe():
            raise ValueError("backup destination is the store itself")
        for m in self._candidates(model_id, revision):
            if structure_problems(self.backend, m):
                logger.warning("backup: skipping checkpoint %s: blobs missing or truncated", m.id)
                continue
            if dest._holds(m):
                return m
            try:
                self._copy_to(m, dest)
            except CorruptCheckpoint as exc:
                logger.warning("backup: skipping checkpoint %s: %s", m.id, "; ".join(exc.problems))
                discard(dest.backend, m.id)
                continue
            dest._known_good.add(m.id)
            if dest.keep is not None:
                dest._auto_prune()
            return m
        raise CheckpointNotFound("latest valid checkpoint", self.backend.describe())

    def _holds(self, m: Manifest) -> bool:
        """This store already has exactly ``m``."""
        try:
            return self.manifest(m.id) == m
        except (CheckpointNotFound, InvalidManifest):
            return False

    def _copy_to(self, m: Manifest, dest: CheckpointStore) -> None:
        with (
            self.backend.lock(exclusive=False, timeout=self._lock_timeout),
            dest.backend.lock(exclusive=False, timeout=dest._lock_timeout),
        ):
            discard(dest.backend, m.id)
            for entry in m.blobs:
                key = m.key_of(entry)
                if entry.kind == KIND_MODEL_FILE and dest.backend.size(key) == entry.size:
                    continue
                try:
                    dest.backend.put(key, verified_chunks(self.backend, m, entry, sha256=False))
                except BlobNotFound as exc:
                    raise CorruptCheckpoint(m.id, [f"{exc.key}: blob is missing"]) from None
            dest.backend.commit(manifest_key(m.id), to_json(m))


__all__ = [
    "BlobProblem",
    "CheckpointStore",
    "PruneReport",
    "Restored",
    "VerifyReport",
]

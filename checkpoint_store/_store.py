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
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from checkpoint_store import _safetensors as st
from checkpoint_store._backend import Backend, BufferLike
from checkpoint_store._errors import (
    BlobNotFound,
    CheckpointError,
    CheckpointNotFound,
    CorruptCheckpoint,
    InvalidManifest,
    InvalidSnapshot,
    StorageError,
    StoreBusy,
)
from checkpoint_store._filesystem import FilesystemBackend
from checkpoint_store._hashing import HASH_CHUNK, Digest, hashed
from checkpoint_store._legacy import load_legacy_pt
from checkpoint_store._manifest import (
    CHECKPOINTS_PREFIX,
    FORMAT,
    KIND_BLOB,
    KIND_MODEL_FILE,
    KIND_STATE,
    KIND_TENSORS,
    OBJECTS_PREFIX,
    STATE_NAME,
    TENSORS_NAME,
    BlobEntry,
    Manifest,
    blob_key,
    checkpoint_prefix,
    from_json,
    label_problem,
    manifest_key,
    new_checkpoint_id,
    object_key,
    to_json,
    valid_id,
    valid_name,
)

logger = logging.getLogger(__name__)

Framework = Literal["auto", "numpy", "torch"]
CheckpointRef = str | Manifest

_READ_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class BlobProblem:
    """One bad blob: ``problem`` is missing, size, checksum, sha256, unreadable or format."""

    kind: str
    name: str
    problem: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "problem": self.problem,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The result of checking every blob of one checkpoint against its manifest."""

    checkpoint_id: str
    manifest: Manifest | None
    problems: tuple[BlobProblem, ...]
    manifest_problems: tuple[str, ...] = ()
    bytes_checked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.manifest_problems

    def describe(self) -> list[str]:
        return [f"manifest: {p}" for p in self.manifest_problems] + [str(p) for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.checkpoint_id,
            "ok": self.ok,
            "manifest_problems": list(self.manifest_problems),
            "problems": [p.to_dict() for p in self.problems],
            "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class Restored:
    """A restored checkpoint. ``tensors`` are numpy arrays or torch tensors (writable,
    copy-on-write views of the verified file); ``model_files`` are verified local paths."""

    manifest: Manifest
    tensors: dict[str, Any]
    state: Any
    blobs: dict[str, bytes]
    model_files: dict[str, Path]
    seconds: float
    bytes_verified: int

    @property
    def id(self) -> str:
        return self.manifest.id


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    torn_removed: tuple[str, ...] = ()
    objects_removed: int = 0
    temp_removed: int = 0
    cleaned: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "kept": list(self.kept),
            "torn_removed": list(self.torn_removed),
            "objects_removed": self.objects_removed,
            "temp_removed": self.temp_removed,
            "cleaned": self.cleaned,
        }


@dataclass
class _FileHashCache:
    """Model files are hashed once per (device, inode, size, mtime)."""

    entries: dict[tuple[int, int, int, int], tuple[str, str | None]] = field(default_factory=dict)


def _producer_versions(extra: Mapping[str, str] | None) -> dict[str, str]:
    out = {
        "format": FORMAT,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "xxhash": xxhash.VERSION,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(getattr(torch, "__version__", "unknown"))
    if extra:
        out.update({str(k): str(v) for k, v in extra.items()})
    return out


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
        self._hash_cache = _FileHashCache()
        self._known_good: set[str] = set()
        self._verified_objects: set[str] = set()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.backend!r}, keep={self.keep})"

    # -- reading manifests ---------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of every committed checkpoint (valid or not), newest first."""
        ids = [
            name
            for name in self.backend.children(CHECKPOINTS_PREFIX)
            if valid_id(name) and self.backend.size(manifest_key(name)) is not None
        ]
        return sorted(ids, reverse=True)

    def manifest(self, checkpoint_id: str) -> Manifest:
        """The manifest of ``checkpoint_id``; ``CheckpointNotFound`` or ``InvalidManifest``."""
        if not valid_id(checkpoint_id):
            raise CheckpointNotFound(checkpoint_id, self.backend.describe())
        try:
            data = self.backend.get(manifest_key(checkpoint_id))
        except BlobNotFound:
            raise CheckpointNotFound(checkpoint_id, self.backend.describe()) from None
        except StorageError as exc:
            raise InvalidManifest([str(exc)], f"manifest {checkpoint_id}") from None
        return from_json(data, expect_id=checkpoint_id)

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

    def _structure_problems(self, m: Manifest) -> builtins.list[BlobProblem]:
        """Missing or wrong-sized blobs (cheap: no data read)."""
        problems = []
        for entry in m.blobs:
            size = self.backend.size(m.key_of(entry))
            if size is None:
                problems.append(BlobProblem(entry.kind, entry.name, "missing", "blob is missing"))
            elif size != entry.size:
                problems.append(_size_problem(entry, size))
        return problems

    # -- verification --------------------------------------------------------------------------

    def _check_blob(
        self, key: str, entry: BlobEntry, sha256: bool
    ) -> tuple[BlobProblem | None, int]:
        """Stream one blob through the checksums; (problem or None, bytes read)."""
        size = self.backend.size(key)
        if size is None:
            return BlobProblem(entry.kind, entry.name, "missing", "blob is missing"), 0
        if size != entry.size:
            return _size_problem(entry, size), 0
        want_sha = sha256 and entry.sha256 is not None
        digest = Digest(sha256=want_sha)
        try:
            mapped = self.backend.map(key)
            if mapped is not None:
                view = memoryview(mapped)
                try:
                    digest.update_chunked(view)
                finally:
                    view.release()
                    mapped.close()
            else:
                reader = self.backend.open(key)
                try:
                    buf = memoryview(bytearray(min(_READ_CHUNK, max(entry.size, 1))))
                    while True:
                        n = reader.readinto(buf) or 0
                        if n == 0:
                            break
                        digest.update(buf[:n])
                finally:
                    reader.close()
        except BlobNotFound:
            return BlobProblem(entry.kind, entry.name, "missing", "blob is missing"), 0
        except StorageError as exc:
            return BlobProblem(entry.kind, entry.name, "unreadable", str(exc)), 0
        return _digest_problem(entry, digest, want_sha), digest.size

    def verify(self, ref: CheckpointRef, *, sha256: bool = True) -> VerifyReport:
        """Check every blob of a checkpoint; the report lists every bad blob (never raises for
        bad data; ``CheckpointNotFound`` for an unknown id). sha256 is checked where recorded."""
        return self._verify(ref, sha256=sha256, object_cache={})

    def _verify(
        self,
        ref: CheckpointRef,
        *,
        sha256: bool,
        object_cache: dict[str, tuple[BlobProblem | None, int]],
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
                key = m.key_of(entry)
                if entry.kind == KIND_MODEL_FILE and key in object_cache:
                    problem, _ = object_cache[key]
                else:
                    problem, n = self._check_blob(key, entry, sha256)
                    checked += n
                    if entry.kind == KIND_MODEL_FILE:
                        object_cache[key] = (problem, n)
                if problem is not None:
                    problems.append(problem)
        if not problems:
            self._known_good.add(m.id)
        return VerifyReport(m.id, m, tuple(problems), (), checked, time.perf_counter() - started)

    def verify_all(self, *, sha256: bool = True) -> builtins.list[VerifyReport]:
        """``verify`` every committed checkpoint, newest first (shared model files read once)."""
        cache: dict[str, tuple[BlobProblem | None, int]] = {}
        reports = []
        for cid in self.ids():
            try:
                reports.append(self._verify(cid, sha256=sha256, object_cache=cache))
            except CheckpointNotFound:
                continue
        return reports

    def _candidates(self, model_id: str | None, revision: str | None) -> Iterator[Manifest]:
        yield from self.list(model_id, revision)

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
                problems = [str(p) for p in self._structure_problems(m)]
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
        blobs: Mapping[str, bytes | bytearray | memoryview] | None = None,
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
        problems: list[str] = []
        for label, value, optional in (
            ("model_id", model_id, False),
            ("revision", revision, False),
            ("parent", parent, True),
        ):
            problem = label_problem(label, value, optional=optional)
            if problem:
                problems.append(problem)
        if parent is not None and isinstance(parent, str) and not valid_id(parent):
            problems.append(f"parent: {parent!r} is not a checkpoint id")
        plan: st.WritePlan | None = None
        if tensors is not None:
            if not isinstance(tensors, Mapping):
                problems.append("tensors: must be a mapping of name to array/tensor")
            else:
                try:
                    plan = st.plan(tensors)
                except st.TensorFormatError as exc:
                    problems.append(str(exc))
        state_bytes: bytes | None = None
        if state is not None:
            if not isinstance(state, Mapping):
                problems.append("state: must be a mapping (a JSON object)")
            else:
                try:
                    state_bytes = json.dumps(state, allow_nan=False, separators=(",", ":")).encode()
                except (TypeError, ValueError) as exc:
                    problems.append(f"state: not JSON-serialisable ({exc})")
        blob_views: dict[str, memoryview] = {}
        for name, data in (blobs or {}).items():
            if not valid_name(name):
                problems.append(f"blobs: {name!r} is not a plain name (letters, digits, . _ -)")
            elif not isinstance(data, bytes | bytearray | memoryview):
                problems.append(f"blobs[{name!r}]: {type(data).__name__} is not bytes")
            else:
                blob_views[name] = memoryview(data).cast("B")
        hashes: dict[str, tuple[str, str, str | None, int]] = {}
        for name, path in (model_files or {}).items():
            if not valid_name(name):
                problems.append(
                    f"model_files: {name!r} is not a plain name (letters, digits, . _ -)"
                )
            elif not os.path.isfile(path):
                problems.append(f"model_files[{name!r}]: {os.fspath(path)} is not a readable file")
            else:
                try:  # hash before taking the lock: a first snapshot of a big model reads it all
                    hashes[name] = (os.fspath(path), *self._hash_file(os.fspath(path)))
                except OSError as exc:
                    problems.append(f"model_files[{name!r}]: cannot read {path}: {exc.strerror}")
        if problems:
            raise InvalidSnapshot(problems)

        now = self._clock()
        cid = new_checkpoint_id(now)
        created = datetime.fromtimestamp(now, UTC)
        entries: list[BlobEntry] = []
        started = time.perf_counter()
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            try:
                for name, (path, xxh, sha, size) in hashes.items():
                    entries.append(self._store_model_file(name, path, xxh, sha, size))
                if plan is not None:
                    entries.append(self._put(cid, KIND_TENSORS, TENSORS_NAME, plan.chunks()))
                if state_bytes is not None:
                    entries.append(self._put(cid, KIND_STATE, STATE_NAME, [state_bytes]))
                for name, view in blob_views.items():
                    entries.append(self._put(cid, KIND_BLOB, name, _chunked(view)))
                manifest = Manifest(
                    id=cid,
                    created=created,
                    model_id=model_id,
                    revision=revision,
                    parent=parent,
                    producer=_producer_versions(producer),
                    blobs=tuple(entries),
                )
                self.backend.commit(manifest_key(cid), to_json(manifest))
            except BaseException:
                self._discard(cid)
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

    def _put(self, cid: str, kind: str, name: str, chunks: Iterable[BufferLike]) -> BlobEntry:
        digest = Digest(sha256=self.sha256)
        probe = BlobEntry(kind=kind, name=name, size=0, xxh3_128="0" * 32)
        size = self.backend.put(blob_key(cid, probe), hashed(chunks, digest))
        return BlobEntry(kind, name, size, digest.xxh3_128, digest.sha256)

    def _discard(self, cid: str) -> None:
        try:
            self.backend.delete(manifest_key(cid))
            self.backend.delete_prefix(checkpoint_prefix(cid))
        except CheckpointError as exc:
            logger.warning("could not remove the partial checkpoint %s: %s", cid, exc)

    def _hash_file(self, path: str) -> tuple[str, str | None, int]:
        st_ = os.stat(path)
        ident = (st_.st_dev, st_.st_ino, st_.st_size, st_.st_mtime_ns)
        cached = self._hash_cache.entries.get(ident)
        if cached is not None and (cached[1] is not None or not self.sha256):
            return cached[0], cached[1], st_.st_size
        digest = Digest(sha256=self.sha256)
        for chunk in _read_file(path):
            digest.update(chunk)
        self._hash_cache.entries[ident] = (digest.xxh3_128, digest.sha256)
        return digest.xxh3_128, digest.sha256, digest.size

    def _store_model_file(
        self, name: str, path: str, xxh: str, sha: str | None, size: int
    ) -> BlobEntry:
        """Make sure the content-addressed copy exists and is sound; copy only if not."""
        entry = BlobEntry(KIND_MODEL_FILE, name, size, xxh, sha)
        key = object_key(xxh)
        if self.backend.size(key) == size:
            if key in self._verified_objects:
                return entry
            # Checked once per process: a damaged copy would otherwise poison every snapshot.
            problem, _ = self._check_blob(key, entry, sha256=False)
            if problem is None:
                self._verified_objects.add(key)
                return entry
            logger.warning("model file copy %s is damaged (%s); storing it again", key, problem)
        digest = Digest(sha256=self.sha256)
        self.backend.put(key, _checked(hashed(_read_file(path), digest), digest, xxh, path))
        self._verified_objects.add(key)
        return entry

    # -- restore --------------------------------------------------------------------------------

    def _load_verified(self, key: str, entry: BlobEntry, sha256: bool) -> Any:
        """The blob's bytes in memory, checked against the manifest as they were read: a
        private memory map where the backend offers one, else a preallocated array."""
        size = self.backend.size(key)
        if size is None:
            raise _corrupt_one(entry, "missing", "blob is missing")
        if size != entry.size:
            raise _corrupt_one(entry, "size", _size_problem(entry, size).detail)
        want_sha = sha256 and entry.sha256 is not None
        digest = Digest(sha256=want_sha)
        buf: Any
        mapped = self.backend.map(key) if entry.size else None
        if mapped is not None:
            view = memoryview(mapped)
            try:
                if len(view) != entry.size:
                    raise _corrupt_one(entry, "size", _size_problem(entry, len(view)).detail)
                digest.update_chunked(view)
            finally:
                view.release()
            buf = mapped
        else:
            buf = np.empty(entry.size, dtype=np.uint8)
            view = memoryview(buf)
            reader = self.backend.open(key)
            try:
                got = 0
                while got < entry.size:
                    n = reader.readinto(view[got : got + _READ_CHUNK]) or 0
                    if n == 0:
                        break
                    digest.update(view[got : got + n])
                    got += n
                extra = reader.readinto(memoryview(bytearray(1))) or 0
            finally:
                reader.close()
            if got != entry.size or extra:
                raise _corrupt_one(entry, "size", f"blob changed size while being read ({got})")
        problem = _digest_problem(entry, digest, want_sha)
        if problem is not None:
            raise CorruptCheckpoint("", [str(problem)])
        return buf

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
        tensors: dict[str, Any] = {}
        state: Any = None
        blobs: dict[str, bytes] = {}
        model_files: dict[str, Path] = {}
        verified = 0
        with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
            try:
                for entry in m.blobs:
                    key = m.key_of(entry)
                    if entry.kind == KIND_MODEL_FILE:
                        path, n = self._model_file(m, entry, sha256, verify_model_files, model_dir)
                        verified += n
                        model_files[entry.name] = path
                        continue
                    buf = self._load_verified(key, entry, sha256)
                    verified += entry.size
                    if entry.kind == KIND_TENSORS:
                        tensors = _tensor_views(buf, entry, framework)
                    elif entry.kind == KIND_STATE:
                        try:
                            state = json.loads(bytes(buf))
                        except (ValueError, UnicodeDecodeError) as exc:
                            raise _corrupt_one(entry, "format", f"not JSON ({exc})") from None
                    else:
                        blobs[entry.name] = bytes(buf)
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
        logger.info("restored checkpoint %s (%d bytes verified) in %.3f s", m.id, verified, seconds)
        return Restored(m, tensors, state, blobs, model_files, seconds, verified)

    def _model_file(
        self,
        m: Manifest,
        entry: BlobEntry,
        sha256: bool,
        verify: bool,
        model_dir: str | os.PathLike[str] | None,
    ) -> tuple[Path, int]:
        """A verified local path for a model file, and the bytes read to verify it."""
        key = m.key_of(entry)
        path = self.backend.local_path(key)
        if path is not None:
            if not verify:
                return path, 0
            problem, n = self._check_blob(key, entry, sha256)
            if problem is not None:
                raise CorruptCheckpoint(m.id, [str(problem)])
            self._verified_objects.add(key)
            return path, n
        if model_dir is None:
            raise CheckpointError(
                f"{self.backend.describe()} has no local files: pass model_dir to restore into"
            )
        local = CheckpointStore(FilesystemBackend(model_dir), keep=None)
        cached = local.backend.local_path(key)
        assert cached is not None
        if local.backend.size(key) == entry.size:
            problem, n = (local._check_blob(key, entry, sha256)) if verify else (None, 0)
            if problem is None:
                return cached, n
        local.backend.put(key, self._verified_chunks(m, entry, sha256))
        return cached, entry.size

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
            problems = self._structure_problems(m)
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
                    out.put(rel, self._verified_chunks(m, entry, sha256))
                except BlobNotFound as exc:
                    raise CorruptCheckpoint(m.id, [f"{exc.key}: blob is missing"]) from None
                written.append(out.root / rel)
        out.put("manifest.json", [to_json(m)])
        written.append(out.root / "manifest.json")
        return written

    def _verified_chunks(self, m: Manifest, entry: BlobEntry, sha256: bool) -> Iterator[memoryview]:
        """The blob's bytes in chunks; raises ``CorruptCheckpoint`` at the end if they do not
        match the manifest (so a ``put`` consuming them stores nothing)."""
        key = m.key_of(entry)
        want_sha = sha256 and entry.sha256 is not None
        digest = Digest(sha256=want_sha)
        try:
            reader = self.backend.open(key)
        except BlobNotFound:
            missing = BlobProblem(entry.kind, entry.name, "missing", "blob is missing")
            raise CorruptCheckpoint(m.id, [str(missing)]) from None
        try:
            buf = memoryview(bytearray(_READ_CHUNK))
            while True:
                n = reader.readinto(buf) or 0
                if n == 0:
                    break
                digest.update(buf[:n])
                if digest.size > entry.size:
                    break
                yield buf[:n]
        finally:
            reader.close()
        problem = _digest_problem(entry, digest, want_sha)
        if problem is not None:
            raise CorruptCheckpoint(m.id, [str(problem)])

    # -- retention, cleaning, backup ------------------------------------------------------------

    def _newest_valid(self, group: builtins.list[Manifest]) -> str | None:
        for m in group:
            if m.id in self._known_good:
                return m.id
            if not self._structure_problems(m) and self.verify(m, sha256=False).ok:
                return m.id
        return None

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
        kept: list[str] = []
        if keep is not None:
            with self.backend.lock(exclusive=False, timeout=self._lock_timeout):
                removed, kept = self._retain(keep)
        else:
            kept = self.ids()
        for cid in removed:
            self._known_good.discard(cid)
        torn: list[str] = []
        temp_removed = objects_removed = 0
        cleaned = True
        try:
            with self.backend.lock(exclusive=True, timeout=timeout):
                torn, temp_removed, objects_removed = self._clean()
        except StoreBusy:
            cleaned = False
            logger.debug("cleaning of %s deferred: a writer is busy", self.backend.describe())
        if removed or torn or temp_removed or objects_removed:
            logger.info(
                "pruned %s: removed %d checkpoints, %d torn, %d temp files, %d model files",
                self.backend.describe(),
                len(removed),
                len(torn),
                temp_removed,
                objects_removed,
            )
        return PruneReport(
            tuple(sorted(removed, reverse=True)),
            tuple(sorted(set(kept) - set(torn), reverse=True)),
            tuple(torn),
            objects_removed,
            temp_removed,
            cleaned,
        )

    def _retain(self, keep: int) -> tuple[builtins.list[str], builtins.list[str]]:
        removed: list[str] = []
        kept: list[str] = []
        invalid: list[str] = []
        groups: dict[str, list[Manifest]] = {}
        for cid in self.ids():
            try:
                m = self.manifest(cid)
            except InvalidManifest:
                invalid.append(cid)
                continue
            except CheckpointNotFound:
                continue  # removed meanwhile by another pruner
            groups.setdefault(m.model_id, []).append(m)
        for ms in groups.values():
            protect = self._newest_valid(ms) if len(ms) > keep else None
            for i, m in enumerate(ms):
                if i < keep or m.id == protect:
                    kept.append(m.id)
                else:
                    self._delete_checkpoint(m.id)
                    removed.append(m.id)
        # A manifest that does not parse is useless; drop it once a sound checkpoint is newer.
        sound = sorted((cid for cid in kept), reverse=True)
        for cid in invalid:
            newer = [s for s in sound if s > cid]
            if any(self._is_sound(s) for s in newer[:3]):
                self._delete_checkpoint(cid)
                removed.append(cid)
            else:
                kept.append(cid)
        return removed, kept

    def _is_sound(self, cid: str) -> bool:
        try:
            return not self._structure_problems(self.manifest(cid))
        except (CheckpointNotFound, InvalidManifest):
            return False

    def _clean(self) -> tuple[builtins.list[str], int, int]:
        """Under the exclusive lock: temp files, torn checkpoints, unreferenced model files."""
        temp_removed = self.backend.clean_temp()
        torn: list[str] = []
        for name in self.backend.children(CHECKPOINTS_PREFIX):
            if valid_id(name) and self.backend.size(manifest_key(name)) is None:
                self.backend.delete_prefix(checkpoint_prefix(name))
                torn.append(name)
        referenced: set[str] = set()
        for cid in self.ids():
            try:
                m = self.manifest(cid)
            except InvalidManifest:
                continue
            referenced.update(m.key_of(e) for e in m.entries(KIND_MODEL_FILE))
        objects_removed = 0
        for key in self.backend.list(OBJECTS_PREFIX):
            if key not in referenced:
                self.backend.delete(key)
                self._verified_objects.discard(key)
                objects_removed += 1
        return torn, temp_removed, objects_removed

    def _auto_prune(self) -> None:
        try:
            self.prune(timeout=0)
        except CheckpointError as exc:
            logger.warning("prune after snapshot failed: %s", exc)

    def _delete_checkpoint(self, cid: str) -> None:
        self.backend.delete(manifest_key(cid))  # first: a half-deleted checkpoint is torn
        self.backend.delete_prefix(checkpoint_prefix(cid))

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
            if self._structure_problems(m):
                logger.warning("backup: skipping checkpoint %s: blobs missing or truncated", m.id)
                continue
            try:
                existing = dest.manifest(m.id)
                if existing == m:
                    return existing
            except (CheckpointNotFound, InvalidManifest):
                pass
            try:
                self._copy_to(m, dest)
            except CorruptCheckpoint as exc:
                logger.warning("backup: skipping checkpoint %s: %s", m.id, "; ".join(exc.problems))
                dest._discard(m.id)
                continue
            dest._known_good.add(m.id)
            if dest.keep is not None:
                dest._auto_prune()
            return m
        raise CheckpointNotFound("latest valid checkpoint", self.backend.describe())

    def _copy_to(self, m: Manifest, dest: CheckpointStore) -> None:
        with (
            self.backend.lock(exclusive=False, timeout=self._lock_timeout),
            dest.backend.lock(exclusive=False, timeout=dest._lock_timeout),
        ):
            dest._discard(m.id)
            for entry in m.blobs:
                key = m.key_of(entry)
                if entry.kind == KIND_MODEL_FILE and dest.backend.size(key) == entry.size:
                    continue
                try:
                    dest.backend.put(key, self._verified_chunks(m, entry, sha256=False))
                except BlobNotFound as exc:
                    raise CorruptCheckpoint(m.id, [f"{exc.key}: blob is missing"]) from None
            dest.backend.commit(manifest_key(m.id), to_json(m))


def _size_problem(entry: BlobEntry, size: int) -> BlobProblem:
    what = "truncated" if size < entry.size else "too long"
    return BlobProblem(
        entry.kind, entry.name, "size", f"{what}: {size} bytes, manifest says {entry.size}"
    )


def _digest_problem(entry: BlobEntry, digest: Digest, sha256: bool) -> BlobProblem | None:
    if digest.size != entry.size:
        return _size_problem(entry, digest.size)
    if digest.xxh3_128 != entry.xxh3_128:
        return BlobProblem(
            entry.kind, entry.name, "checksum", "xxh3-128 mismatch: the bytes have changed"
        )
    if sha256 and digest.sha256 != entry.sha256:
        return BlobProblem(
            entry.kind, entry.name, "sha256", "sha256 mismatch: the bytes have changed"
        )
    return None


def _corrupt_one(entry: BlobEntry, problem: str, detail: str) -> CorruptCheckpoint:
    return CorruptCheckpoint("", [str(BlobProblem(entry.kind, entry.name, problem, detail))])


def _tensor_views(buf: Any, entry: BlobEntry, framework: Framework) -> dict[str, Any]:
    try:
        layout = st.parse_header(memoryview(buf))
        fw = framework
        if fw == "auto":
            fw = "torch" if layout.metadata.get("format") == "pt" else "numpy"
        return st.views(buf, layout, "pt" if fw == "torch" else "np")
    except st.TensorFormatError as exc:
        raise _corrupt_one(entry, "format", f"not a valid safetensors file: {exc}") from None


def _chunked(view: memoryview, chunk: int = HASH_CHUNK * 4) -> Iterator[memoryview]:
    if not len(view):
        yield view
    for off in range(0, len(view), chunk):
        yield view[off : off + chunk]


def _read_file(path: str) -> Iterator[memoryview]:
    """A file's bytes in chunks (one reused buffer: consume each chunk before the next)."""
    with open(path, "rb", buffering=0) as f:
        buf = memoryview(bytearray(_READ_CHUNK))
        while True:
            n = f.readinto(buf)
            if not n:
                break
            yield buf[:n]


def _checked(
    chunks: Iterable[BufferLike], digest: Digest, expected: str, path: str
) -> Iterator[BufferLike]:
    """Fail the ``put`` if the file's content changed since it was hashed."""
    yield from chunks
    if digest.xxh3_128 != expected:
        raise InvalidSnapshot([f"model file {path} changed while it was being stored"])


__all__ = [
    "BlobProblem",
    "CheckpointStore",
    "PruneReport",
    "Restored",
    "VerifyReport",
]

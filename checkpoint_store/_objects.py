"""Model files, stored once by content hash under ``objects/`` and shared by every checkpoint.

A multi-gigabyte model is hashed once per file version (device, inode, size, mtime), copied
into the store once per content, and checked once per process before a new checkpoint names
it again: a damaged copy would otherwise poison every later snapshot. On restore a model file
is a verified local path: the store's own copy, or, for a backend without local files, a
verified copy in a local directory that is reused from then on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from checkpoint_store._backend import Backend, BufferLike
from checkpoint_store._errors import CheckpointError, CorruptCheckpoint, InvalidSnapshot
from checkpoint_store._filesystem import FilesystemBackend
from checkpoint_store._hashing import Digest, hashed
from checkpoint_store._manifest import KIND_MODEL_FILE, BlobEntry, Manifest, object_key
from checkpoint_store._reading import READ_CHUNK, check_blob, verified_chunks

logger = logging.getLogger(__name__)

_FileIdent = tuple[int, int, int, int]


class ModelFiles:
    """The content-addressed model files of one backend, with what this process knows of
    them: the hashes of local files, and which stored copies it has checked."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._hashes: dict[_FileIdent, tuple[str, str | None]] = {}
        self._verified: set[str] = set()

    def hash(self, path: str, *, sha256: bool) -> tuple[str, str | None, int]:
        """(xxh3-128, sha256 or None, size) of a local file, from cache when it is unchanged."""
        st_ = os.stat(path)
        ident = (st_.st_dev, st_.st_ino, st_.st_size, st_.st_mtime_ns)
        cached = self._hashes.get(ident)
        if cached is not None and (cached[1] is not None or not sha256):
            return cached[0], cached[1], st_.st_size
        digest = Digest(sha256=sha256)
        for chunk in read_file(path):
            digest.update(chunk)
        self._hashes[ident] = (digest.xxh3_128, digest.sha256)
        return digest.xxh3_128, digest.sha256, digest.size

    def store(
        self, name: str, path: str, hashes: tuple[str, str | None, int], *, sha256: bool
    ) -> BlobEntry:
        """Make sure the content-addressed copy exists and is sound; copy only if not."""
        xxh, sha, size = hashes
        entry = BlobEntry(KIND_MODEL_FILE, name, size, xxh, sha)
        key = object_key(xxh)
        if self.backend.size(key) == size:
            if key in self._verified:
                return entry
            # Checked once per process: a damaged copy would otherwise poison every snapshot.
            problem, _ = check_blob(self.backend, key, entry, sha256=False)
            if problem is None:
                self._verified.add(key)
                return entry
            logger.warning("model file copy %s is damaged (%s); storing it again", key, problem)
        digest = Digest(sha256=sha256)
        self.backend.put(key, _checked(hashed(read_file(path), digest), digest, xxh, path))
        self._verified.add(key)
        return entry

    def local(
        self,
        m: Manifest,
        entry: BlobEntry,
        *,
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
            problem, n = check_blob(self.backend, key, entry, sha256)
            if problem is not None:
                raise CorruptCheckpoint(m.id, [str(problem)])
            self._verified.add(key)
            return path, n
        if model_dir is None:
            raise CheckpointError(
                f"{self.backend.describe()} has no local files: pass model_dir to restore into"
            )
        local = FilesystemBackend(model_dir)
        cached = local.local_path(key)
        assert cached is not None
        if local.size(key) == entry.size:
            problem, n = check_blob(local, key, entry, sha256) if verify else (None, 0)
            if problem is None:
                return cached, n
        local.put(key, verified_chunks(self.backend, m, entry, sha256))
        return cached, entry.size

    def forget(self, key: str) -> None:
        """``key`` was deleted: check it again if it is ever stored anew."""
        self._verified.discard(key)


def read_file(path: str) -> Iterator[memoryview]:
    """A file's bytes in chunks (one reused buffer: consume each chunk before the next)."""
    with open(path, "rb", buffering=0) as f:
        buf = memoryview(bytearray(READ_CHUNK))
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

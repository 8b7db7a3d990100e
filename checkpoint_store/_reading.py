"""Reading a checkpoint back: manifests, and blobs checked against them byte by byte.

Every path that reads blob data goes through here, so each one checks size and xxh3-128 (and
sha256 when asked) over the bytes as they are read: a flipped byte or a truncated blob is
caught before any of its data is used. Blobs are memory-mapped where the backend can (a
private, copy-on-write map, hashed as it is first touched), else read into one preallocated
buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from checkpoint_store import _safetensors as st
from checkpoint_store._backend import Backend
from checkpoint_store._errors import (
    BlobNotFound,
    CheckpointNotFound,
    CorruptCheckpoint,
    InvalidManifest,
    StorageError,
)
from checkpoint_store._hashing import Digest
from checkpoint_store._manifest import (
    CHECKPOINTS_PREFIX,
    BlobEntry,
    Manifest,
    from_json,
    manifest_key,
    valid_id,
)
from checkpoint_store._reports import (
    BlobProblem,
    corrupt_one,
    digest_problem,
    missing_problem,
    size_problem,
)

Framework = Literal["auto", "numpy", "torch"]

READ_CHUNK = 16 * 1024 * 1024


def committed_ids(backend: Backend) -> list[str]:
    """Ids of every committed checkpoint (valid or not), newest first."""
    ids = [
        name
        for name in backend.children(CHECKPOINTS_PREFIX)
        if valid_id(name) and backend.size(manifest_key(name)) is not None
    ]
    return sorted(ids, reverse=True)


def read_manifest(backend: Backend, checkpoint_id: str) -> Manifest:
    """The manifest of ``checkpoint_id``; ``CheckpointNotFound`` or ``InvalidManifest``."""
    if not valid_id(checkpoint_id):
        raise CheckpointNotFound(checkpoint_id, backend.describe())
    try:
        data = backend.get(manifest_key(checkpoint_id))
    except BlobNotFound:
        raise CheckpointNotFound(checkpoint_id, backend.describe()) from None
    except StorageError as exc:
        raise InvalidManifest([str(exc)], f"manifest {checkpoint_id}") from None
    return from_json(data, expect_id=checkpoint_id)


def structure_problems(backend: Backend, m: Manifest) -> list[BlobProblem]:
    """Missing or wrong-sized blobs (cheap: no data read)."""
    problems = []
    for entry in m.blobs:
        size = backend.size(m.key_of(entry))
        if size is None:
            problems.append(missing_problem(entry))
        elif size != entry.size:
            problems.append(size_problem(entry, size))
    return problems


def check_blob(
    backend: Backend, key: str, entry: BlobEntry, sha256: bool
) -> tuple[BlobProblem | None, int]:
    """Stream one blob through the checksums; (problem or None, bytes read)."""
    size = backend.size(key)
    if size is None:
        return missing_problem(entry), 0
    if size != entry.size:
        return size_problem(entry, size), 0
    want_sha = sha256 and entry.sha256 is not None
    digest = Digest(sha256=want_sha)
    try:
        _digest_blob(backend, key, entry, digest)
    except BlobNotFound:
        return missing_problem(entry), 0
    except StorageError as exc:
        return BlobProblem(entry.kind, entry.name, "unreadable", str(exc)), 0
    return digest_problem(entry, digest, want_sha), digest.size


def _digest_blob(backend: Backend, key: str, entry: BlobEntry, digest: Digest) -> None:
    mapped = backend.map(key)
    if mapped is not None:
        view = memoryview(mapped)
        try:
            digest.update_chunked(view)
        finally:
            view.release()
            mapped.close()
        return
    reader = backend.open(key)
    try:
        buf = memoryview(bytearray(min(READ_CHUNK, max(entry.size, 1))))
        while True:
            n = reader.readinto(buf) or 0
            if n == 0:
                break
            digest.update(buf[:n])
    finally:
        reader.close()


def load_verified(backend: Backend, key: str, entry: BlobEntry, sha256: bool) -> Any:
    """The blob's bytes in memory, checked against the manifest as they were read: a
    private memory map where the backend offers one, else a preallocated array."""
    size = backend.size(key)
    if size is None:
        raise corrupt_one(entry, "missing", "blob is missing")
    if size != entry.size:
        raise corrupt_one(entry, "size", size_problem(entry, size).detail)
    want_sha = sha256 and entry.sha256 is not None
    digest = Digest(sha256=want_sha)
    mapped = backend.map(key) if entry.size else None
    buf: Any
    if mapped is not None:
        view = memoryview(mapped)
        try:
            if len(view) != entry.size:
                raise corrupt_one(entry, "size", size_problem(entry, len(view)).detail)
            digest.update_chunked(view)
        finally:
            view.release()
        buf = mapped
    else:
        buf = _read_whole(backend, key, entry, digest)
    problem = digest_problem(entry, digest, want_sha)
    if problem is not None:
        raise CorruptCheckpoint("", [str(problem)])
    return buf


def _read_whole(backend: Backend, key: str, entry: BlobEntry, digest: Digest) -> Any:
    """The blob read into one array of its manifest size; it must be exactly that long."""
    buf: Any = np.empty(entry.size, dtype=np.uint8)
    view = memoryview(buf)
    reader = backend.open(key)
    try:
        got = 0
        while got < entry.size:
            n = reader.readinto(view[got : got + READ_CHUNK]) or 0
            if n == 0:
                break
            digest.update(view[got : got + n])
            got += n
        extra = reader.readinto(memoryview(bytearray(1))) or 0
    finally:
        reader.close()
    if got != entry.size or extra:
        raise corrupt_one(entry, "size", f"blob changed size while being read ({got})")
    return buf


def verified_chunks(
    backend: Backend, m: Manifest, entry: BlobEntry, sha256: bool
) -> Iterator[memoryview]:
    """The blob's bytes in chunks; raises ``CorruptCheckpoint`` at the end if they do not
    match the manifest (so a ``put`` consuming them stores nothing)."""
    key = m.key_of(entry)
    want_sha = sha256 and entry.sha256 is not None
    digest = Digest(sha256=want_sha)
    try:
        reader = backend.open(key)
    except BlobNotFound:
        raise CorruptCheckpoint(m.id, [str(missing_problem(entry))]) from None
    try:
        buf = memoryview(bytearray(READ_CHUNK))
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
    problem = digest_problem(entry, digest, want_sha)
    if problem is not None:
        raise CorruptCheckpoint(m.id, [str(problem)])


def tensor_views(buf: Any, entry: BlobEntry, framework: Framework) -> dict[str, Any]:
    """Zero-copy arrays (or torch tensors) over a verified safetensors blob."""
    try:
        layout = st.parse_header(memoryview(buf))
        fw = framework
        if fw == "auto":
            fw = "torch" if layout.metadata.get("format") == "pt" else "numpy"
        return st.views(buf, layout, "pt" if fw == "torch" else "np")
    except st.TensorFormatError as exc:
        raise corrupt_one(entry, "format", f"not a valid safetensors file: {exc}") from None

"""The storage backend interface: the few operations a checkpoint store needs from storage.

A backend stores opaque objects under slash-separated keys. It knows nothing of manifests or
checksums: the store computes those over the bytes it streams through ``put`` and ``open``, so
every backend gets the same verification. What a backend must guarantee:

- ``put`` is atomic and durable: after it returns, the object is complete and survives a crash;
  a reader never sees a partial object under the key, whatever happens during the call.
- ``commit`` is ``put`` for a small object that must not exist yet (the manifest); it is the
  commit point of a checkpoint, so it is durable before it returns.
- ``lock`` gives shared (writers of new checkpoints, readers) and exclusive (prune, cleaning)
  access across processes; a crashed holder must not keep the lock.
- Errors are the store's typed errors (``BlobNotFound``, ``StorageFull``, ``StorageError``).

The filesystem backend is the only one so far; an object-store backend would implement the same
methods (``map`` and ``local_path`` may return None) and join the shared backend test suite.
"""

from __future__ import annotations

import builtins
import mmap
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from checkpoint_store._errors import StorageError

BufferLike = bytes | bytearray | memoryview

_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*/?$")


def check_key(key: str) -> str:
    """Reject keys that could name something outside the store (``..``, absolute, hidden)."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or len(key) > 1024:
        raise StorageError(f"refusing storage key {key!r}: not a plain relative path")
    return key


class BlobReader(Protocol):
    """A readable object: sequential ``readinto`` until it returns 0, then ``close``."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


class Backend(ABC):
    """Where checkpoint objects live. See the module docstring for the guarantees."""

    @abstractmethod
    def describe(self) -> str:
        """Where this backend stores things, for messages (a path, a bucket URL)."""

    @abstractmethod
    def put(self, key: str, chunks: Iterable[BufferLike]) -> int:
        """Store the concatenated ``chunks`` under ``key`` atomically and durably; bytes written.

        Replaces an existing object. If iterating ``chunks`` raises, nothing is stored and the
        exception propagates.
        """

    @abstractmethod
    def commit(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``data`` atomically and durably; fail if it exists."""

    @abstractmethod
    def open(self, key: str) -> BlobReader:
        """Open an object for sequential reading; ``BlobNotFound`` if absent."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if there is no object under ``key``."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys of every complete object under ``prefix`` (recursively), sorted."""

    @abstractmethod
    def children(self, prefix: str) -> builtins.list[str]:
        """Names directly under ``prefix`` (objects and sub-prefixes), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove everything under ``prefix``; the number of objects removed."""

    @abstractmethod
    def lock(self, *, exclusive: bool, timeout: float) -> AbstractContextManager[None]:
        """Hold the store's lock (shared or exclusive); ``StoreBusy`` after ``timeout`` s."""

    @abstractmethod
    def clean_temp(self) -> int:
        """Remove leftovers of interrupted ``put``/``commit`` calls; call only while holding the
        exclusive lock (no writer is running). Returns how many were removed."""

    def get(self, key: str) -> bytes:
        """The whole object (for small objects: manifests, JSON state)."""
        reader = self.open(key)
        try:
            parts: list[bytes] = []
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = reader.readinto(view) or 0
                if n == 0:
                    break
                parts.append(bytes(view[:n]))
            return b"".join(parts)
        finally:
            reader.close()

    def map(self, key: str) -> mmap.mmap | None:
        """A private, writable (copy-on-write) memory map of the object, where the backend can
        offer one; None otherwise (or for an empty object)."""
        return None

    def local_path(self, key: str) -> Path | None:
        """A local file holding the object, where the backend has one; None otherwise."""
        return None

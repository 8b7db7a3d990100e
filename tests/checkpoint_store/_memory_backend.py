"""An in-memory backend: a second implementation of the backend interface for the shared suite.

It has no memory maps and no local files, so the store's portable paths (sequential reads into
a preallocated buffer, model files copied into a local directory) are exercised the way an
object-store backend would exercise them. Locks work within one process only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import threading
import time
from collections.abc import Iterable, Iterator

from checkpoint_store import Backend, BlobNotFound, StorageError, StorageFull, StoreBusy, check_key
from checkpoint_store._backend import BufferLike


class MemoryBackend(Backend):
    def __init__(self, name: str = "memory", *, capacity: int | None = None) -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.capacity = capacity
        self._mutex = threading.Lock()
        self._readers = 0
        self._writer = False

    def describe(self) -> str:
        return f"memory://{self.name}/{id(self)}"

    def _used(self) -> int:
        return sum(len(v) for v in self.objects.values())

    def put(self, key: str, chunks: Iterable[BufferLike]) -> int:
        check_key(key)
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if self.capacity is not None and self._used() + len(data) > self.capacity:
                raise StorageFull(f"writing {key}: storage full", errno.ENOSPC)
        self.objects[key] = bytes(data)
        return len(data)

    def commit(self, key: str, data: bytes) -> None:
        check_key(key)
        if key in self.objects:
            raise StorageError(f"committing {key}: already exists", errno.EEXIST)
        self.put(key, [data])

    def open(self, key: str) -> io.BytesIO:
        check_key(key)
        try:
            return io.BytesIO(self.objects[key])
        except KeyError:
            raise BlobNotFound(key) from None

    def size(self, key: str) -> int | None:
        check_key(key)
        data = self.objects.get(key)
        return None if data is None else len(data)

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def children(self, prefix: str) -> list[str]:
        names = {k[len(prefix) :].split("/", 1)[0] for k in self.objects if k.startswith(prefix)}
        return sorted(n for n in names if n)

    def delete(self, key: str) -> None:
        self.objects.pop(check_key(key), None)

    def delete_prefix(self, prefix: str) -> int:
        check_key(prefix)
        doomed = [k for k in self.objects if k.startswith(prefix.rstrip("/") + "/")]
        for k in doomed:
            del self.objects[k]
        return len(doomed)

    @contextlib.contextmanager
    def lock(self, *, exclusive: bool, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        while True:
            with self._mutex:
                if exclusive and not self._writer and self._readers == 0:
                    self._writer = True
                    break
                if not exclusive and not self._writer:
                    self._readers += 1
                    break
            if time.monotonic() >= deadline:
                raise StoreBusy(f"{self.describe()} is busy")
            time.sleep(0.005)
        try:
            yield
        finally:
            with self._mutex:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1

    def clean_temp(self) -> int:
        return 0  # puts are atomic in memory: nothing is ever left half-written

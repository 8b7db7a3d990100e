"""Backend kits: every store and backend test runs once per backend.

A kit makes backends and knows how to damage one from outside (flip a byte, truncate, fill the
disk), which is backend-specific. An object-store backend joins by adding a kit here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpoint_store import Backend, CheckpointStore, FileOps, FilesystemBackend
from tests.checkpoint_store._memory_backend import MemoryBackend


class FullDiskOps(FileOps):
    """A disk with ``budget`` bytes free: writes past it fail with ENOSPC."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def write(self, fd: int, data: memoryview) -> int:
        if len(data) > self.budget:
            if self.budget == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: self.budget]
        n = super().write(fd, data)
        self.budget -= n
        return n


class Kit:
    name = ""
    multiprocess = False

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make(self, name: str = "store") -> Backend:
        raise NotImplementedError

    def make_full(self, backend: Backend, budget: int) -> Backend:
        """Another handle on ``backend``'s storage, with only ``budget`` bytes of room left."""
        raise NotImplementedError

    def read(self, backend: Backend, key: str) -> bytes:
        raise NotImplementedError

    def write(self, backend: Backend, key: str, data: bytes) -> None:
        """Replace an object's bytes behind the store's back."""
        raise NotImplementedError

    def flip(self, backend: Backend, key: str, offset: int = -1) -> None:
        data = bytearray(self.read(backend, key))
        data[offset] ^= 0x01
        self.write(backend, key, bytes(data))

    def truncate(self, backend: Backend, key: str, by: int = 1) -> None:
        self.write(backend, key, self.read(backend, key)[:-by])


class FilesystemKit(Kit):
    name = "filesystem"
    multiprocess = True

    def make(self, name: str = "store") -> FilesystemBackend:
        return FilesystemBackend(self.tmp_path / name)

    def make_full(self, backend: Backend, budget: int) -> Backend:
        assert isinstance(backend, FilesystemBackend)
        return FilesystemBackend(backend.root, file_ops=FullDiskOps(budget))

    def path(self, backend: Backend, key: str) -> Path:
        assert isinstance(backend, FilesystemBackend)
        return backend.root / key

    def read(self, backend: Backend, key: str) -> bytes:
        return self.path(backend, key).read_bytes()

    def write(self, backend: Backend, key: str, data: bytes) -> None:
        path = self.path(backend, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class MemoryKit(Kit):
    name = "memory"

    def make(self, name: str = "store") -> MemoryBackend:
        return MemoryBackend(name)

    def make_full(self, backend: Backend, budget: int) -> Backend:
        assert isinstance(backend, MemoryBackend)
        backend.capacity = backend._used() + budget
        return backend

    def read(self, backend: Backend, key: str) -> bytes:
        assert isinstance(backend, MemoryBackend)
        return backend.objects[key]

    def write(self, backend: Backend, key: str, data: bytes) -> None:
        assert isinstance(backend, MemoryBackend)
        backend.objects[key] = data


KITS: dict[str, Callable[[Path], Kit]] = {"filesystem": FilesystemKit, "memory": MemoryKit}


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    return KITS[request.param](tmp_path)


@pytest.fixture
def backend(kit: Kit) -> Backend:
    return kit.make()


@pytest.fixture
def store(backend: Backend) -> CheckpointStore:
    return CheckpointStore(backend, keep=None)


@pytest.fixture
def fs_store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(FilesystemBackend(tmp_path / "fs"), keep=None)

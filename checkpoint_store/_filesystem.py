"""The filesystem backend: a directory on a local disk, a shared volume or a PVC.

Atomicity and durability come from the classic protocol: write to a hidden temp file in the
target's directory, fsync it, rename (or link, for create-only commits) it into place, fsync the
directory. Large writes start kernel writeback as they go (``sync_file_range`` on Linux), so the
final fsync has little left to do and a snapshot does not pile gigabytes of dirty pages on a
serving process. Reads refuse symlinks and anything resolving outside the root. The lock is an
``flock`` on a file in the root: the kernel drops it when a holder dies, even by ``kill -9``.

All system calls that write go through ``FileOps``, the one seam tests replace (a disk that fills
up after N bytes).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from checkpoint_store._backend import Backend, BufferLike, check_key
from checkpoint_store._errors import (
    BlobNotFound,
    InvalidStore,
    StorageError,
    StoreBusy,
    storage_error,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_TMP_MARK = ".tmp."
_WRITEBACK_STEP = 32 * 1024 * 1024
_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


class FileOps:
    """The system calls the backend writes with; subclass to inject faults in tests."""

    def __init__(self) -> None:
        self._sync_file_range: Callable[[int, int, int, int], int] | None = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
                fn.restype = ctypes.c_int
                self._sync_file_range = fn
            except (OSError, AttributeError):
                self._sync_file_range = None

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def writeback(self, fd: int, start: int, length: int, previous: tuple[int, int] | None) -> None:
        """Start writing ``[start, start+length)`` to disk now, and wait for the previous range:
        dirty memory stays bounded and the final fsync is short. Best effort."""
        if self._sync_file_range is None:
            return
        self._sync_file_range(fd, start, length, _SYNC_FILE_RANGE_WRITE)
        if previous is not None:
            self._sync_file_range(
                fd,
                previous[0],
                previous[1],
                _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER,
            )


class _Reader:
    """Unbuffered sequential reads of one file (``readinto`` straight into the caller's memory)."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0, closefd=True)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def readinto(self, buffer: memoryview) -> int | None:
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()


class FilesystemBackend(Backend):
    """Objects as files under ``root``. ``create``: make the directory if it is missing."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        file_ops: FileOps | None = None,
        lock_poll: float = 0.02,
    ) -> None:
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise InvalidStore(f"checkpoint directory {path} is not a directory")
        if not path.exists():
            if not create:
                raise InvalidStore(f"checkpoint directory {path} does not exist")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidStore(
                    f"cannot create checkpoint directory {path}: {exc.strerror}"
                ) from None
        self.root = Path(os.path.realpath(path))
        self._root_str = str(self.root)
        self._ops = file_ops or FileOps()
        self._lock_poll = lock_poll

    def describe(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"FilesystemBackend({self._root_str!r})"

    # -- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self._root_str, check_key(key).rstrip("/"))

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self._root_str or real.startswith(self._root_str + os.sep)

    def _ensure_dir(self, directory: str, action: str) -> None:
        """Create ``directory`` and missing parents durably (each new entry's parent fsynced)."""
        if os.path.isdir(directory):
            return
        missing: list[str] = []
        d = directory
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for new in reversed(missing):
            try:
                self._ops.mkdir(new)
            except FileExistsError:
                continue
            except OSError as exc:
                raise storage_error(exc, action) from None
            try:
                self._ops.fsync_dir(os.path.dirname(new))
            except OSError as exc:
                raise storage_error(exc, action) from None

    def _temp_path(self, final: str) -> str:
        head, tail = os.path.split(final)
        return os.path.join(head, f".{tail}{_TMP_MARK}{os.getpid()}.{secrets.token_hex(4)}")

    def _write_temp(self, final: str, chunks: Iterable[BufferLike], action: str) -> tuple[str, int]:
        self._ensure_dir(os.path.dirname(final), action)
        tmp = self._temp_path(final)
        try:
            fd = self._ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error(exc, action) from None
        total = 0
        try:
            flushed = 0
            previous: tuple[int, int] | None = None
            for chunk in chunks:
                view = memoryview(chunk).cast("B") if not isinstance(chunk, memoryview) else chunk
                if view.format != "B" or view.ndim != 1:
                    view = view.cast("B")
                length = len(view)
                off = 0
                while off < length:
                    off += self._ops.write(fd, view[off:])
                total += length
                if total - flushed >= _WRITEBACK_STEP:
                    self._ops.writeback(fd, flushed, total - flushed, previous)
                    previous = (flushed, total - flushed)
                    flushed = total
            self._ops.fsync(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self._ops.close(fd)
            with contextlib.suppress(OSError):
                self._ops.unlink(tmp)
            if isinstance(exc, OSError):
                raise storage_error(exc, action) from None
            raise
        try:
            self._ops.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._ops.unlink(tmp)
            raise storage_error(exc, action) from None
        return tmp, total

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[BufferLike]) -> int:
        final = self._path(key)
        action = f"writing {key} in {self._root_str}"
        tmp, total = self._write_temp(final, chunks, action)
        try:
            self._ops.replace(tmp, final)
            self._ops.fsync_dir(os.path.dirname(final))
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._ops.unlink(tmp)
            raise storage_error(exc, action) from None
        return total

    def commit(self, key: str, data: bytes) -> None:
        final = self._path(key)
        action = f"committing {key} in {self._root_str}"
        tmp, _ = self._write_temp(final, [data], action)
        try:
            self._ops.link(tmp, final)  # atomic create-only: fails if the key exists
        except FileExistsError:
            with contextlib.suppress(OSError):
                self._ops.unlink(tmp)
            raise StorageError(f"{action}: already exists", errno.EEXIST) from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._ops.unlink(tmp)
            raise storage_error(exc, action) from None
        try:
            self._ops.unlink(tmp)
            self._ops.fsync_dir(os.path.dirname(final))
        except OSError as exc:
            raise storage_error(exc, action) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(exc, f"deleting {key}") from None

    def delete_prefix(self, prefix: str) -> int:
        top = self._path(prefix)
        if not os.path.lexists(top):
            return 0
        removed = 0

        def attempt(fn: Callable[[str], None], path: str) -> bool:
            try:
                fn(path)
                return True
            except FileNotFoundError:
                return False  # another pruner got there first
            except OSError as exc:
                raise storage_error(exc, f"deleting {prefix}") from None

        if os.path.islink(top) or not os.path.isdir(top):
            return int(attempt(os.unlink, top))
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    attempt(os.unlink, full)
                else:
                    attempt(os.rmdir, full)
            for name in filenames:
                if attempt(os.unlink, os.path.join(dirpath, name)) and _TMP_MARK not in name:
                    removed += 1
        attempt(os.rmdir, top)
        return removed

    # -- reads -------------------------------------------------------------------------------

    def _open_fd(self, key: str) -> int:
        path = self._path(key)
        if not self._inside(os.path.dirname(path)):
            raise StorageError(f"{key} resolves outside {self._root_str}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"{key} is a symlink; refusing to follow it") from None
            raise storage_error(exc, f"reading {key}") from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise storage_error(exc, f"reading {key}") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StorageError(f"{key} is not a regular file")
        return fd

    def open(self, key: str) -> _Reader:
        return _Reader(self._open_fd(key))

    def map(self, key: str) -> mmap.mmap | None:
        fd = self._open_fd(key)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return None
            mapped = mmap.mmap(
                fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise storage_error(exc, f"mapping {key}") from None
        finally:
            os.close(fd)
        with contextlib.suppress(OSError, AttributeError):
            mapped.madvise(mmap.MADV_WILLNEED)
        return mapped

    def size(self, key: str) -> int | None:
        try:
            st = os.lstat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, f"reading {key}") from None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return Path(path) if self._inside(path) else None

    def list(self, prefix: str) -> list[str]:
        top = self._path(prefix) if prefix else self._root_str
        base = prefix.rstrip("/")
        if not os.path.isdir(top):
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, top)
            for name in filenames:
                if name.startswith("."):
                    continue
                parts = [p for p in (base, "" if rel == "." else rel, name) if p]
                keys.append("/".join(parts).replace(os.sep, "/"))
        return sorted(keys)

    def children(self, prefix: str) -> builtins.list[str]:
        top = self._path(prefix) if prefix else self._root_str
        try:
            return sorted(n for n in os.listdir(top) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise storage_error(exc, f"listing {prefix}") from None

    # -- locking and cleaning ----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, exclusive: bool, timeout: float) -> Iterator[None]:
        path = os.path.join(self._root_str, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error(exc, f"opening lock {path}") from None
        try:
            op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                try:
                    fcntl.flock(fd, op)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        kind = "exclusive" if exclusive else "shared"
                        raise StoreBusy(
                            f"{self._root_str} is busy: no {kind} lock within {timeout:g} s"
                        ) from None
                    time.sleep(self._lock_poll)
            yield
        finally:
            os.close(fd)  # releases the flock

    def clean_temp(self) -> int:
        removed = 0
        for dirpath, dirnames, filenames in os.walk(self._root_str):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") and _TMP_MARK in name:
                    try:
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise storage_error(exc, f"removing stale {name}") from None
        return removed

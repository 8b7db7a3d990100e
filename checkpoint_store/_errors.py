"""Typed errors of the checkpoint store.

Every failure is either *temporary* (a retry may help: the disk is full and space may be freed,
the store is locked by a prune in another process, an I/O error on a network volume) or
*permanent* (retrying the same call cannot help: a corrupt blob, a manifest that is not JSON, an
unknown checkpoint id, a bad argument). Callers branch on these two classes; ``OSError`` from the
storage layer is mapped here and never leaks out of the package.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence


class CheckpointError(Exception):
    """Base of every error raised by the checkpoint store."""

    temporary: bool = False


class TemporaryCheckpointError(CheckpointError):
    """A failure that may go away: retry later (with backoff)."""

    temporary = True


class PermanentCheckpointError(CheckpointError):
    """A failure a retry cannot fix: report it, fall back to another checkpoint."""


class CheckpointNotFound(PermanentCheckpointError, LookupError):
    """No checkpoint with this id (or no valid checkpoint at all) in the store."""

    def __init__(self, checkpoint_id: str, where: str = "") -> None:
        self.checkpoint_id = checkpoint_id
        super().__init__(f"no checkpoint {checkpoint_id!r}" + (f" in {where}" if where else ""))


class BlobNotFound(PermanentCheckpointError, LookupError):
    """A backend has no object under the key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no blob {key!r}")


class InvalidManifest(PermanentCheckpointError):
    """A manifest is not JSON, misses fields, or names blobs outside the store.

    ``problems`` lists every bad field at once (``"field: what is wrong"``).
    """

    def __init__(self, problems: Sequence[str], where: str = "manifest") -> None:
        self.problems: list[str] = list(problems)
        self.where = where
        super().__init__(f"invalid {where}: " + "; ".join(self.problems))


class CorruptCheckpoint(PermanentCheckpointError):
    """One or more blobs of a checkpoint are missing, truncated or fail their checksum.

    ``problems`` has one line per bad blob.
    """

    def __init__(self, checkpoint_id: str, problems: Iterable[str]) -> None:
        self.checkpoint_id = checkpoint_id
        self.problems: list[str] = list(problems)
        super().__init__(f"checkpoint {checkpoint_id} is corrupt: " + "; ".join(self.problems))


class InvalidSnapshot(PermanentCheckpointError, ValueError):
    """Arguments to ``snapshot`` (or a legacy file to import) cannot be stored.

    ``problems`` lists every bad argument at once.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("cannot snapshot: " + "; ".join(self.problems))


class StorageError(TemporaryCheckpointError):
    """The storage layer failed (an ``OSError`` underneath); ``errno`` is kept."""

    def __init__(self, message: str, err: int | None = None) -> None:
        self.errno = err
        super().__init__(message)


class StorageFull(StorageError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT); nothing was committed."""


class StoreBusy(TemporaryCheckpointError):
    """The store's lock was not obtained in time (a prune or snapshot holds it)."""


_FULL = {errno.ENOSPC, errno.EDQUOT}


def storage_error(exc: OSError, action: str) -> StorageError:
    """Map an ``OSError`` raised while doing ``action`` to our typed error."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return StorageFull(
            f"{action}: storage full ({reason}); free space or prune old checkpoints", exc.errno
        )
    return StorageError(f"{action}: {reason}", exc.errno)


class InvalidStore(PermanentCheckpointError):
    """The store's location is unusable: missing, not a directory, or not writable."""

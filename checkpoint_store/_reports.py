"""What the store's operations answer: one bad blob, a verification, a restore, a prune.

These are plain frozen values, printed by the CLI and serialised to JSON by ``to_dict``; the
helpers at the end turn a size or a checksum that does not match the manifest into the one
``BlobProblem`` every reading path reports, so a torn blob reads the same wherever it is found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_store._errors import CorruptCheckpoint
from checkpoint_store._hashing import Digest
from checkpoint_store._manifest import BlobEntry, Manifest


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


def missing_problem(entry: BlobEntry) -> BlobProblem:
    return BlobProblem(entry.kind, entry.name, "missing", "blob is missing")


def size_problem(entry: BlobEntry, size: int) -> BlobProblem:
    what = "truncated" if size < entry.size else "too long"
    return BlobProblem(
        entry.kind, entry.name, "size", f"{what}: {size} bytes, manifest says {entry.size}"
    )


def digest_problem(entry: BlobEntry, digest: Digest, sha256: bool) -> BlobProblem | None:
    """What is wrong with bytes that hashed to ``digest`` (None: they match the manifest)."""
    if digest.size != entry.size:
        return size_problem(entry, digest.size)
    if digest.xxh3_128 != entry.xxh3_128:
        return BlobProblem(
            entry.kind, entry.name, "checksum", "xxh3-128 mismatch: the bytes have changed"
        )
    if sha256 and digest.sha256 != entry.sha256:
        return BlobProblem(
            entry.kind, entry.name, "sha256", "sha256 mismatch: the bytes have changed"
        )
    return None


def corrupt_one(entry: BlobEntry, problem: str, detail: str) -> CorruptCheckpoint:
    """A ``CorruptCheckpoint`` for one blob, its id filled in by the caller's handler."""
    return CorruptCheckpoint("", [str(BlobProblem(entry.kind, entry.name, problem, detail))])

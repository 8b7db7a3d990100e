"""Settings of the checkpoint store, built once in an entry point from ``SUREFOOT_*`` variables.

``SUREFOOT_CHECKPOINT_DIR``: where checkpoints live (default: the user's cache directory,
``$XDG_CACHE_HOME/surefoot/checkpoints`` or ``~/.cache/surefoot/checkpoints``).
``SUREFOOT_CHECKPOINT_KEEP``: checkpoints kept per model (default 3).
``SUREFOOT_CHECKPOINT_SHA256``: also record sha256 of every blob (``1``/``true``; default off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from checkpoint_store._filesystem import FilesystemBackend
from checkpoint_store._store import CheckpointStore

DEFAULT_KEEP = 3


def default_directory(environ: Mapping[str, str]) -> Path:
    """The user's cache directory for checkpoints (no ``SUREFOOT_CHECKPOINT_DIR`` applied)."""
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".cache"
    )
    return Path(cache) / "surefoot" / "checkpoints"


@dataclass(frozen=True)
class CheckpointSettings:
    directory: Path
    keep: int = DEFAULT_KEEP
    sha256: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CheckpointSettings:
        """Build settings from environment variables; ``ValueError`` names every bad one."""
        problems: list[str] = []
        raw_dir = environ.get("SUREFOOT_CHECKPOINT_DIR", "").strip()
        directory = Path(raw_dir).expanduser() if raw_dir else default_directory(environ)
        keep = DEFAULT_KEEP
        raw_keep = environ.get("SUREFOOT_CHECKPOINT_KEEP", "").strip()
        if raw_keep:
            try:
                keep = int(raw_keep)
                if keep < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"SUREFOOT_CHECKPOINT_KEEP={raw_keep!r}: must be an integer >= 1")
        raw_sha = environ.get("SUREFOOT_CHECKPOINT_SHA256", "").strip().lower()
        if raw_sha not in ("", "0", "1", "true", "false", "yes", "no"):
            problems.append(f"SUREFOOT_CHECKPOINT_SHA256={raw_sha!r}: must be 1/0 or true/false")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(directory=directory, keep=keep, sha256=raw_sha in ("1", "true", "yes"))


def open_store(settings: CheckpointSettings, *, create: bool = True) -> CheckpointStore:
    """A store over the filesystem backend at ``settings.directory``."""
    backend = FilesystemBackend(settings.directory, create=create)
    return CheckpointStore(backend, keep=settings.keep, sha256=settings.sha256)

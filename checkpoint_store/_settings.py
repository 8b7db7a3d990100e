"""Settings of the checkpoint store, built once in an entry point from ``SUREFOOT_*`` variables.

``SUREFOOT_CHECKPOINT_DIR``: where checkpoints live (default: the user's cache directory,
``$XDG_CACHE_HOME/surefoot/checkpoints`` or ``~/.cache/surefoot/checkpoints``).
``SUREFOOT_CHECKPOINT_KEEP``: checkpoints kept per model (default 3).
``SUREFOOT_CHECKPOINT_SHA256``: also record sha256 of every blob (a bool: ``1/true/yes/on`` or
``0/false/no/off``; default off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from checkpoint_store._filesystem import FilesystemBackend
from checkpoint_store._store import CheckpointStore
from envreader import EnvError, env_fields, parse

DEFAULT_KEEP = 3
PREFIX = "SUREFOOT_CHECKPOINT_"
ENV_DIR = PREFIX + "DIR"


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
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> CheckpointSettings:
        """Settings from ``SUREFOOT_CHECKPOINT_*`` variables, then ``overrides`` that are not
        None; ``EnvError`` (a ``ValueError``) names every bad variable."""
        values, errors = env_fields(cls, PREFIX, env, skip=("directory",))
        raw_dir = env.get(ENV_DIR, "")
        directory = parse(Path, raw_dir) if raw_dir.strip() else default_directory(env)
        keep = values.get("keep", DEFAULT_KEEP)
        if PREFIX + "KEEP" not in errors and keep < 1:
            errors[PREFIX + "KEEP"] = f"{env[PREFIX + 'KEEP']!r} must be an integer >= 1"
        if errors:
            raise EnvError(errors)
        given = {k: v for k, v in overrides.items() if v is not None}
        if "directory" in given:
            given["directory"] = Path(given["directory"]).expanduser()
        return replace(cls(directory=directory, **values), **given)


def open_store(settings: CheckpointSettings, *, create: bool = True) -> CheckpointStore:
    """A store over the filesystem backend at ``settings.directory``."""
    backend = FilesystemBackend(settings.directory, create=create)
    return CheckpointStore(backend, keep=settings.keep, sha256=settings.sha256)

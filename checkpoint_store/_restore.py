"""Restoring one checkpoint into memory: its tensors, state, blobs and model-file paths.

Each blob is loaded through ``_reading`` (checked as it is read) and turned into what the
caller asked for: tensors as zero-copy numpy arrays or torch tensors, state from JSON, blobs as
bytes, model files as verified local paths. The first bad blob stops the restore with
``CorruptCheckpoint``, so no caller ever sees data that does not match its manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint_store._manifest import (
    KIND_MODEL_FILE,
    KIND_STATE,
    KIND_TENSORS,
    BlobEntry,
    Manifest,
)
from checkpoint_store._objects import ModelFiles
from checkpoint_store._reading import Framework, load_verified, tensor_views
from checkpoint_store._reports import corrupt_one


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore: see ``CheckpointStore.restore``."""

    framework: Framework = "auto"
    sha256: bool = False
    verify_model_files: bool = True
    model_dir: str | os.PathLike[str] | None = None


@dataclass
class Loaded:
    """What a restore has read so far."""

    tensors: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    model_files: dict[str, Path] = field(default_factory=dict)
    verified: int = 0


def load(m: Manifest, model_files: ModelFiles, options: RestoreOptions) -> Loaded:
    """Every blob of ``m``, verified (the caller holds the store's lock and maps errors)."""
    loaded = Loaded()
    for entry in m.blobs:
        if entry.kind == KIND_MODEL_FILE:
            path, n = model_files.local(
                m,
                entry,
                sha256=options.sha256,
                verify=options.verify_model_files,
                model_dir=options.model_dir,
            )
            loaded.verified += n
            loaded.model_files[entry.name] = path
        else:
            buf = load_verified(model_files.backend, m.key_of(entry), entry, options.sha256)
            loaded.verified += entry.size
            _place(loaded, entry, buf, options.framework)
    return loaded


def _place(loaded: Loaded, entry: BlobEntry, buf: Any, framework: Framework) -> None:
    if entry.kind == KIND_TENSORS:
        loaded.tensors = tensor_views(buf, entry, framework)
    elif entry.kind == KIND_STATE:
        try:
            loaded.state = json.loads(bytes(buf))
        except (ValueError, UnicodeDecodeError) as exc:
            raise corrupt_one(entry, "format", f"not JSON ({exc})") from None
    else:
        loaded.blobs[entry.name] = bytes(buf)

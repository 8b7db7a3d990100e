"""What a snapshot is made of, checked before anything is written.

``prepare`` turns the caller's tensors, state, blobs and model files into what the store
writes (a safetensors write plan, JSON bytes, byte views, hashed model files) and reports every
bad argument at once as ``InvalidSnapshot``; nothing is stored for a snapshot that does not
pass. Model files are hashed here, before the store's lock is taken: a first snapshot of a big
model reads all of it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from checkpoint_store import _safetensors as st
from checkpoint_store._errors import InvalidSnapshot
from checkpoint_store._hashing import HASH_CHUNK
from checkpoint_store._manifest import FORMAT, label_problem, valid_id, valid_name

FileHashes = tuple[str, str | None, int]  # xxh3-128, sha256 or None, size
HashFile = Callable[[str], FileHashes]
BlobData = bytes | bytearray | memoryview


@dataclass
class SnapshotInputs:
    """The checked contents of one snapshot, ready to write."""

    plan: st.WritePlan | None = None
    state: bytes | None = None
    blobs: dict[str, memoryview] = field(default_factory=dict)
    model_files: dict[str, tuple[str, FileHashes]] = field(default_factory=dict)


def prepare(
    *,
    model_id: str,
    revision: str,
    parent: str | None,
    tensors: Mapping[str, Any] | None,
    state: Mapping[str, Any] | None,
    blobs: Mapping[str, BlobData] | None,
    model_files: Mapping[str, str | os.PathLike[str]] | None,
    hash_file: HashFile,
) -> SnapshotInputs:
    """The snapshot's contents; ``InvalidSnapshot`` listing every bad argument."""
    problems = _label_problems(model_id, revision, parent)
    inputs = SnapshotInputs()
    if tensors is not None:
        inputs.plan = _plan(tensors, problems)
    if state is not None:
        inputs.state = _state_bytes(state, problems)
    inputs.blobs = _blob_views(blobs or {}, problems)
    inputs.model_files = _hash_model_files(model_files or {}, hash_file, problems)
    if problems:
        raise InvalidSnapshot(problems)
    return inputs


def _label_problems(model_id: str, revision: str, parent: str | None) -> list[str]:
    problems: list[str] = []
    for label, value, optional in (
        ("model_id", model_id, False),
        ("revision", revision, False),
        ("parent", parent, True),
    ):
        problem = label_problem(label, value, optional=optional)
        if problem:
            problems.append(problem)
    if parent is not None and isinstance(parent, str) and not valid_id(parent):
        problems.append(f"parent: {parent!r} is not a checkpoint id")
    return problems


def _plan(tensors: object, problems: list[str]) -> st.WritePlan | None:
    if not isinstance(tensors, Mapping):
        problems.append("tensors: must be a mapping of name to array/tensor")
        return None
    try:
        return st.plan(tensors)
    except st.TensorFormatError as exc:
        problems.append(str(exc))
        return None


def _state_bytes(state: object, problems: list[str]) -> bytes | None:
    if not isinstance(state, Mapping):
        problems.append("state: must be a mapping (a JSON object)")
        return None
    try:
        return json.dumps(state, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        problems.append(f"state: not JSON-serialisable ({exc})")
        return None


def _blob_views(blobs: Mapping[str, object], problems: list[str]) -> dict[str, memoryview]:
    views: dict[str, memoryview] = {}
    for name, data in blobs.items():
        if not valid_name(name):
            problems.append(f"blobs: {name!r} is not a plain name (letters, digits, . _ -)")
        elif not isinstance(data, bytes | bytearray | memoryview):
            problems.append(f"blobs[{name!r}]: {type(data).__name__} is not bytes")
        else:
            views[name] = memoryview(data).cast("B")
    return views


def _hash_model_files(
    model_files: Mapping[str, str | os.PathLike[str]], hash_file: HashFile, problems: list[str]
) -> dict[str, tuple[str, FileHashes]]:
    hashes: dict[str, tuple[str, FileHashes]] = {}
    for name, path in model_files.items():
        if not valid_name(name):
            problems.append(f"model_files: {name!r} is not a plain name (letters, digits, . _ -)")
        elif not os.path.isfile(path):
            problems.append(f"model_files[{name!r}]: {os.fspath(path)} is not a readable file")
        else:
            try:
                hashes[name] = (os.fspath(path), hash_file(os.fspath(path)))
            except OSError as exc:
                problems.append(f"model_files[{name!r}]: cannot read {path}: {exc.strerror}")
    return hashes


def producer_versions(extra: Mapping[str, str] | None) -> dict[str, str]:
    """What wrote the checkpoint: format, Python, numpy, xxhash (and torch if loaded)."""
    out = {
        "format": FORMAT,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "xxhash": xxhash.VERSION,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(getattr(torch, "__version__", "unknown"))
    if extra:
        out.update({str(k): str(v) for k, v in extra.items()})
    return out


def chunked(view: memoryview, chunk: int = HASH_CHUNK * 4) -> Iterator[memoryview]:
    """A blob's bytes in slices (one empty slice for an empty blob)."""
    if not len(view):
        yield view
    for off in range(0, len(view), chunk):
        yield view[off : off + chunk]

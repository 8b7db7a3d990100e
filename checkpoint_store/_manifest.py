"""The checkpoint manifest: what a checkpoint contains, and the only file that commits it.

A manifest is small JSON written last; its presence is what makes a checkpoint exist. It names
every blob with its size and checksums, so a reader can tell a complete checkpoint from a torn or
corrupted one without trusting anything else on disk. Pure ``to_json`` / ``from_json`` over frozen
dataclasses; ``from_json`` reports every bad field at once, and rejects any name that could
resolve outside the store (blob storage keys are derived from validated names and hex digests,
never taken from the file).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import xxhash

from checkpoint_store._errors import InvalidManifest

FORMAT = "surefoot.checkpoint/1"
MANIFEST_NAME = "manifest.json"
CHECKPOINTS_PREFIX = "checkpoints/"
OBJECTS_PREFIX = "objects/"

KIND_TENSORS = "tensors"
KIND_STATE = "state"
KIND_BLOB = "blob"
KIND_MODEL_FILE = "model_file"
KINDS = (KIND_TENSORS, KIND_STATE, KIND_BLOB, KIND_MODEL_FILE)

TENSORS_NAME = "tensors.safetensors"
STATE_NAME = "state.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{12}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LABEL = 256


def valid_name(name: object) -> bool:
    """A blob or model-file name: one path component of safe characters, no leading dot."""
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and name not in (".", "..")


def valid_id(checkpoint_id: object) -> bool:
    return isinstance(checkpoint_id, str) and bool(_ID_RE.match(checkpoint_id))


def label_problem(field_name: str, value: object, *, optional: bool = False) -> str | None:
    """Why ``value`` is not a usable model id / revision / parent label, or None."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        return f"{field_name}: must be a non-empty string"
    if len(value) > _MAX_LABEL:
        return f"{field_name}: longer than {_MAX_LABEL} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{field_name}: contains control characters"
    return None


def new_checkpoint_id(now: float) -> str:
    """A sortable, unique id: UTC time to the microsecond plus 48 random bits."""
    stamp = datetime.fromtimestamp(now, UTC)
    return stamp.strftime("%Y%m%dT%H%M%S.%f") + "Z-" + secrets.token_hex(6)


@dataclass(frozen=True)
class BlobEntry:
    """One blob of a checkpoint: its kind, name, size and checksums."""

    kind: str
    name: str
    size: int
    xxh3_128: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "size": self.size,
            "xxh3_128": self.xxh3_128,
        }
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint's description. ``blobs`` is in storage order."""

    id: str
    created: datetime
    model_id: str
    revision: str
    parent: str | None
    producer: Mapping[str, str] = field(default_factory=dict)
    blobs: tuple[BlobEntry, ...] = ()

    @property
    def size(self) -> int:
        """Total bytes of every blob (model files included)."""
        return sum(b.size for b in self.blobs)

    def entries(self, kind: str) -> list[BlobEntry]:
        return [b for b in self.blobs if b.kind == kind]

    def key_of(self, entry: BlobEntry) -> str:
        return blob_key(self.id, entry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "created": format_time(self.created),
            "model_id": self.model_id,
            "revision": self.revision,
            "parent": self.parent,
            "producer": dict(self.producer),
            "blobs": [b.to_dict() for b in self.blobs],
        }


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def manifest_key(checkpoint_id: str) -> str:
    return f"{CHECKPOINTS_PREFIX}{checkpoint_id}/{MANIFEST_NAME}"


def checkpoint_prefix(checkpoint_id: str) -> str:
    return f"{CHECKPOINTS_PREFIX}{checkpoint_id}/"


def object_key(digest: str) -> str:
    """Content-addressed key of a model file, by its xxh3-128 hex digest."""
    return f"{OBJECTS_PREFIX}{digest[:2]}/{digest}"


def blob_key(checkpoint_id: str, entry: BlobEntry) -> str:
    """Where a blob lives; derived only from validated fields, never from the file."""
    if entry.kind == KIND_MODEL_FILE:
        return object_key(entry.xxh3_128)
    if entry.kind == KIND_BLOB:
        return f"{CHECKPOINTS_PREFIX}{checkpoint_id}/blobs/{entry.name}"
    return f"{CHECKPOINTS_PREFIX}{checkpoint_id}/{entry.name}"


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def to_json(manifest: Manifest) -> bytes:
    """The manifest file's bytes: readable JSON carrying a checksum of its own content."""
    body = manifest.to_dict()
    body["checksum"] = xxhash.xxh3_128_hexdigest(_canonical(body))
    return json.dumps(body, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"


def from_json(data: bytes, *, expect_id: str | None = None) -> Manifest:
    """Parse and validate manifest bytes; raises ``InvalidManifest`` listing every problem."""
    where = f"manifest {expect_id}" if expect_id else "manifest"
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest([f"not JSON ({exc})"], where) from None
    if not isinstance(body, dict):
        raise InvalidManifest(["not a JSON object"], where)
    problems = _header_problems(body, expect_id)
    created = _parse_created(body.get("created"), problems)
    problems.extend(_label_problems(body))
    producer = _parse_producer(body.get("producer", {}), problems)
    blobs = _parse_blobs(body.get("blobs"), problems)
    if problems:
        raise InvalidManifest(problems, where)
    cid, parent = body.get("id"), body.get("parent")
    assert isinstance(cid, str)
    assert created is not None
    return Manifest(
        id=cid,
        created=created,
        model_id=str(body["model_id"]),
        revision=str(body["revision"]),
        parent=parent if isinstance(parent, str) else None,
        producer=producer,
        blobs=tuple(blobs),
    )


def _header_problems(body: dict[str, Any], expect_id: str | None) -> list[str]:
    """Format, self-checksum (removed from ``body``) and id."""
    problems: list[str] = []
    if body.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}, got {body.get('format')!r}")
    checksum = body.pop("checksum", None)
    if not isinstance(checksum, str):
        problems.append("checksum: missing")
    elif checksum != xxhash.xxh3_128_hexdigest(_canonical(body)):
        problems.append("checksum: does not match the manifest's content (edited or corrupted)")
    cid = body.get("id")
    if not valid_id(cid):
        problems.append(f"id: {cid!r} is not a checkpoint id")
    elif expect_id is not None and cid != expect_id:
        problems.append(f"id: {cid!r} does not match its location {expect_id!r}")
    return problems


def _parse_created(raw: object, problems: list[str]) -> datetime | None:
    created: datetime | None = None
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            created = datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    if created is None:
        problems.append(f"created: {raw!r} is not a UTC time like 2025-01-31T12:00:00.000000Z")
    return created


def _label_problems(body: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, optional in (("model_id", False), ("revision", False), ("parent", True)):
        problem = label_problem(name, body.get(name), optional=optional)
        if problem:
            problems.append(problem)
    parent = body.get("parent")
    if isinstance(parent, str) and not valid_id(parent):
        problems.append(f"parent: {parent!r} is not a checkpoint id")
    return problems


def _parse_producer(raw: object, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        problems.append("producer: must be an object of strings")
        return {}
    return dict(raw)


def _parse_blobs(raw_blobs: object, problems: list[str]) -> list[BlobEntry]:
    if not isinstance(raw_blobs, list):
        problems.append("blobs: must be a list")
        return []
    blobs: list[BlobEntry] = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(raw_blobs):
        entry, entry_problems = _parse_entry(i, raw)
        problems.extend(entry_problems)
        if entry is not None:
            if (entry.kind, entry.name) in seen:
                problems.append(f"blobs[{i}]: duplicate {entry.kind} {entry.name!r}")
            seen.add((entry.kind, entry.name))
            blobs.append(entry)
    return blobs


def _parse_entry(i: int, raw: object) -> tuple[BlobEntry | None, list[str]]:
    at = f"blobs[{i}]"
    if not isinstance(raw, dict):
        return None, [f"{at}: must be an object"]
    problems: list[str] = []
    kind = raw.get("kind")
    name = raw.get("name")
    size = raw.get("size")
    xxh = raw.get("xxh3_128")
    sha = raw.get("sha256")
    if kind not in KINDS:
        problems.append(f"{at}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not valid_name(name):
        problems.append(
            f"{at}.name: {name!r} is not a plain file name (letters, digits, . _ -; "
            "no path separators, no leading dot)"
        )
    elif kind == KIND_TENSORS and name != TENSORS_NAME:
        problems.append(f"{at}.name: tensors blob must be named {TENSORS_NAME!r}")
    elif kind == KIND_STATE and name != STATE_NAME:
        problems.append(f"{at}.name: state blob must be named {STATE_NAME!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"{at}.size: {size!r} is not a byte count")
    if not isinstance(xxh, str) or not _HEX32.match(xxh):
        problems.append(f"{at}.xxh3_128: {xxh!r} is not 32 lowercase hex digits")
    if sha is not None and (not isinstance(sha, str) or not _HEX64.match(sha)):
        problems.append(f"{at}.sha256: {sha!r} is not 64 lowercase hex digits")
    if problems:
        return None, problems
    assert isinstance(kind, str)
    assert isinstance(name, str)
    assert isinstance(size, int)
    assert isinstance(xxh, str)
    return BlobEntry(kind=kind, name=name, size=size, xxh3_128=xxh, sha256=sha), []

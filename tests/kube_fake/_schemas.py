"""The real Knative CRD schemas (``shared/schemas/knative/openapiv3``), loaded for validation.

The files are structural OpenAPI v3 schemas. A JSON-Schema validator accepts them as they are;
to reject unknown fields the way an API server does under ``fieldValidation=Strict``, every
object schema that lists ``properties`` and does not set
``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false`` (the recipe in that
folder's README). ``apiVersion``, ``kind`` and ``metadata`` are left out: the API server handles
TypeMeta and ObjectMeta itself (some of these schemas do not even list them), and so does the
fake.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_REPO = Path(__file__).resolve().parents[2]
# TypeMeta and ObjectMeta: the API server handles them itself, whatever a CRD schema lists.
_IMPLICIT = ("apiVersion", "kind", "metadata")


class SchemaFolderMissing(RuntimeError):
    pass


def schema_dir() -> Path:
    """``$SUREFOOT_KNATIVE_SCHEMAS``, else ``shared/`` inside or beside the repository."""
    env = os.environ.get("SUREFOOT_KNATIVE_SCHEMAS")
    candidates = [Path(env)] if env else []
    candidates += [_REPO / "shared/schemas/knative", _REPO.parent / "shared/schemas/knative"]
    for c in candidates:
        if (c / "openapiv3").is_dir():
            return c / "openapiv3"
    raise SchemaFolderMissing(
        "Knative CRD schemas not found; looked in " + ", ".join(str(c) for c in candidates)
    )


@functools.cache
def knative_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): openAPIV3Schema}`` for every file in the folder."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(schema_dir().glob("*.yaml")):
        group, version, kind = path.stem.rsplit("_", 2)
        with path.open() as f:
            out[(f"{group}/{version}", kind)] = yaml.safe_load(f)
    return out


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy with ``additionalProperties: false`` where the API server would prune."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def _validators(api_version: str, kind: str) -> tuple[Any, Any] | None:
    schema = knative_schemas().get((api_version, kind))
    if schema is None:
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema), cls(strict(schema))


def has_schema(api_version: str, kind: str) -> bool:
    return _validators(api_version, kind) is not None


def _path(error: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "<root>"


def schema_errors(obj: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(unknown_fields, invalid)`` for an object of a kind with a schema: unknown field paths
    (strict mode), and type/pattern violations as ``path: message``."""
    pair = _validators(str(obj.get("apiVersion")), str(obj.get("kind")))
    if pair is None:
        raise KeyError(f"no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    loose, strict_v = pair
    body = {k: v for k, v in obj.items() if k not in _IMPLICIT}
    invalid = [f"{_path(e)}: {e.message}" for e in loose.iter_errors(body)]
    unknown = []
    for e in strict_v.iter_errors(body):
        if e.validator == "additionalProperties":
            base = _path(e)
            allowed = set(e.schema.get("properties", {}))
            for extra in sorted(set(e.instance) - allowed):
                unknown.append(extra if base == "<root>" else f"{base}.{extra}")
    return sorted(unknown), sorted(invalid)


def prune(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop unknown fields as the API server does by default; returns the pruned copy and the
    paths it removed."""
    pair = knative_schemas().get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if pair is None:
        return obj, []
    removed: list[str] = []

    def walk(node: Any, schema: dict[str, Any], path: str) -> Any:
        if isinstance(node, dict) and schema.get("type") == "object":
            if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
                return node
            props = schema.get("properties")
            addl = schema.get("additionalProperties")
            out = {}
            for k, v in node.items():
                if props is not None and k in props:
                    out[k] = walk(v, props[k], f"{path}.{k}" if path else k)
                elif isinstance(addl, dict):
                    out[k] = walk(v, addl, f"{path}.{k}" if path else k)
                elif schema.get("x-kubernetes-preserve-unknown-fields") or props is None:
                    out[k] = v
                else:
                    removed.append(f"{path}.{k}" if path else k)
            return out
        if isinstance(node, list) and isinstance(schema.get("items"), dict):
            return [walk(v, schema["items"], f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    body = {k: v for k, v in obj.items() if k not in _IMPLICIT}
    pruned = walk(body, pair, "")
    pruned.update({k: obj[k] for k in _IMPLICIT if k in obj})
    return pruned, removed

"""The response and request schemas of OpenAI's published OpenAPI document (vendored under
tests/data/openai/, see its README), as jsonschema validators."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC = Path(__file__).resolve().parent.parent / "data" / "openai" / "schemas.json"
URI = "urn:openai:openapi"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still used in places of the 3.1 document) as JSON
    Schema says it: the schema, or null."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def document() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(DOC.read_text())
    return raw


# A streamed completion's chunks are documented as ``CreateCompletionResponse``, whose
# ``finish_reason`` is an enum without null; OpenAI's own streams (and its client) have it null
# until the last chunk of a choice. This variant says that, and nothing more.
STREAMED_COMPLETION = "CreateCompletionResponseChunk"
# ``encoding_format: "base64"`` answers each ``embedding`` as a base64 string (the document's
# own description of the field), where ``Embedding`` types it as a list of numbers only.
BASE64_EMBEDDINGS = "CreateEmbeddingResponseBase64"
BASE64_EMBEDDING = "EmbeddingBase64"


@cache
def _registry() -> Registry:  # type: ignore[type-arg]
    doc = _nullable(copy.deepcopy(document()))
    schemas = doc["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [finish, {"type": "null"}]}
    schemas[STREAMED_COMPLETION] = chunk
    b64 = copy.deepcopy(schemas["CreateEmbeddingResponse"])
    b64["properties"]["data"]["items"] = {"$ref": f"{URI}#/components/schemas/{BASE64_EMBEDDING}"}
    schemas[BASE64_EMBEDDINGS] = b64
    one = copy.deepcopy(schemas["Embedding"])
    one["properties"]["embedding"] = {"type": "string", "contentEncoding": "base64"}
    schemas[BASE64_EMBEDDING] = one
    return Registry().with_resource(URI, Resource.from_contents(doc, DRAFT202012))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"},
                                registry=_registry())


def violations(name: str, instance: Any) -> list[str]:
    """Every way ``instance`` breaks schema ``name`` (empty when it conforms)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in validator(name).iter_errors(instance)]


def properties(name: str) -> set[str]:
    """The top-level fields of schema ``name``, through ``allOf`` and references."""
    schemas = document()["components"]["schemas"]

    def walk(node: dict[str, Any]) -> set[str]:
        if "$ref" in node:
            return walk(schemas[node["$ref"].rsplit("/", 1)[-1]])
        out = set(node.get("properties", {}))
        for part in node.get("allOf", []):
            out |= walk(part)
        return out

    return walk(schemas[name])

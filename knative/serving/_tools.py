"""Structured output: ``response_format`` and tool calls, held to a llama.cpp grammar.

A JSON object, or JSON that matches a schema, is enforced while sampling by a grammar built
from the schema (llama.cpp's JSON-schema converter), so the answer parses by construction.
Tools are offered to the model in a system turn that lists them and says how to call one (the
small models served here have chat templates without a tools section); the model's answer is
parsed back into ``tool_calls``. ``tool_choice: "required"`` or a named function constrains the
answer to the JSON of such a call.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from knative.serving._features import Constraint, Tools
from knative.serving._openai import ChatMessage


def _grammar_of_schema(schema: dict[str, Any]) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def _call_schema(fn: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": fn["name"]},
                                             "arguments": fn["parameters"]},
            "required": ["name", "arguments"]}


def grammar(constraint: Constraint | None, tools: Tools) -> Any:
    """The llama.cpp grammar the answer must follow, or None when it is free."""
    if constraint is not None and constraint.kind == "json_object":
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if constraint is not None and constraint.kind == "json_schema":
        return _grammar_of_schema(constraint.schema or {})
    if tools.choice in ("none", "auto") or not tools.functions:
        return None
    named = [f for f in tools.functions if f["name"] == tools.choice]
    options = [_call_schema(f) for f in (named or tools.functions)]
    return _grammar_of_schema(options[0] if len(options) == 1 else {"anyOf": options})


def constraint_text(constraint: Constraint | None) -> str | None:
    """What the model is told about the required format (the grammar enforces it)."""
    if constraint is None:
        return None
    if constraint.kind == "json_schema":
        return ("Answer with JSON only, matching this JSON schema: "
                + json.dumps(constraint.schema or {}))
    return "Answer with a JSON object only."


def tools_text(tools: Tools) -> str:
    lines = ["You can call these functions:"]
    for fn in tools.functions:
        lines.append(json.dumps({"name": fn["name"], "description": fn["description"],
                                 "parameters": fn["parameters"]}))
    lines.append('To call a function, answer with only a JSON object: {"name": <function '
                 'name>, "arguments": <an object of its parameters>}'
                 + (", or a JSON list of such objects to call several." if tools.parallel
                    else "."))
    if tools.choice == "auto":
        lines.append("Otherwise answer in plain text.")
    return "\n".join(lines)


def with_instructions(messages: tuple[ChatMessage, ...], text: str | None
                      ) -> tuple[ChatMessage, ...]:
    """The conversation with ``text`` put in its system turn (one is added when absent)."""
    if not text:
        return messages
    if messages and messages[0].role == "system":
        first = ChatMessage("system", f"{messages[0].content}\n\n{text}")
        return (first, *messages[1:])
    return (ChatMessage("system", text), *messages)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _calls_of(value: Any, names: set[str]) -> list[dict[str, Any]] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": item["name"], "arguments": json.dumps(args)}})
    return calls or None


def parse_tool_calls(text: str, tools: Tools) -> list[dict[str, Any]] | None:
    """The tool calls the model's ``text`` makes (OpenAI's ``tool_calls``), or None when it
    is not a call of an offered function."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    calls = _calls_of(value, {f["name"] for f in tools.functions})
    if calls is not None and not tools.parallel:
        calls = calls[:1]
    return calls

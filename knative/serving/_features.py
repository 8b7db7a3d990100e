"""The OpenAI request fields beyond plain sampling: ``n``, logprobs, token-id prompts,
``response_format``, tools, and the fields this server accepts without acting on them or
refuses on purpose.

Each is validated into a small value the generation layer acts on; a field that is refused
names itself as the error's ``param`` (the reasons are in ``docs/api.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knative.serving._openai import _Collector

# the most alternatives a request may ask for at one position (OpenAI's own bound)
MAX_TOP_LOGPROBS = 20

TokenIds = tuple[int, ...]
Prompt = str | TokenIds


@dataclass(frozen=True)
class Constraint:
    """What the output must be: any JSON object, JSON matching ``schema``, or (for a tool
    call) the JSON of a call to one of ``tools``."""

    kind: str  # "json_object" | "json_schema" | "tool_call"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Tools:
    """The functions a chat request offers and how the model may use them."""

    functions: tuple[dict[str, Any], ...] = ()  # each {"name", "description", "parameters"}
    choice: str = "none"  # "none" | "auto" | "required" | a function's name
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.choice != "none"


def _is_tokens(v: Any) -> bool:
    return (isinstance(v, list) and bool(v)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v))


def prompts(c: _Collector, name: str, raw: Any, limit: int) -> tuple[Prompt, ...]:
    """A string, a list of strings, a list of token ids, or a list of such lists."""
    out: tuple[Prompt, ...] = ()
    if raw is None:
        c.add(name, "is required")
    elif isinstance(raw, str):
        out = (raw,)
    elif _is_tokens(raw):
        out = (tuple(raw),)
    elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        out = tuple(raw)
    elif isinstance(raw, list) and raw and all(_is_tokens(p) for p in raw):
        out = tuple(tuple(p) for p in raw)
    else:
        c.add(name, "must be a string, a list of strings, a list of token ids (non-negative "
              "integers) or a list of such lists, none empty")
    if len(out) > limit:
        c.add(name, f"at most {limit} inputs per request")
    return out


def choices_n(c: _Collector, max_n: int) -> int:
    n = c.integer("n", 1)
    if n is None:
        return 1
    if not 1 <= n <= max_n:
        c.add("n", f"must be between 1 and {max_n}, got {n}")
        return 1
    return n


def best_of(c: _Collector, n: int) -> None:
    """``best_of`` equal to ``n`` is what ``n`` does; more would need ranking by logprob."""
    value = c.integer("best_of", None)
    if value is not None and value != n:
        c.add("best_of", f"only best_of equal to n ({n}) is supported, got {value}")


def completion_logprobs(c: _Collector) -> int | None:
    value = c.integer("logprobs", None)
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        c.add("logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}, got {value}")
        return None
    return value


def chat_logprobs(c: _Collector) -> int | None:
    """``logprobs: true`` with ``top_logprobs: k`` -> k (0 when absent); None when off."""
    on = c.boolean("logprobs")
    top = c.integer("top_logprobs", None)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        c.add("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}, got {top}")
        return None
    if top is not None and not on:
        c.add("top_logprobs", "needs logprobs: true")
        return None
    return (top or 0) if on else None


def logit_bias(c: _Collector) -> None:
    value = c.body.get("logit_bias")
    if value is None or value == {}:
        return
    if not isinstance(value, dict):
        c.add("logit_bias", "must be an object of token id -> bias")
        return
    c.add("logit_bias", "is not supported (a non-empty bias)")


def response_format(c: _Collector) -> Constraint | None:
    raw = c.body.get("response_format")
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            c.add("response_format.json_schema", "must be an object with a name")
            return None
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            c.add("response_format.json_schema.schema", "must be a JSON schema object")
            return None
        return Constraint("json_schema", schema)
    c.add("response_format", "type must be 'text', 'json_object' or 'json_schema'")
    return None


def _function(c: _Collector, i: int, tool: Any) -> dict[str, Any] | None:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
        c.add(f"tools[{i}]", "must be {type: 'function', function: {name, parameters}}")
        return None
    name = fn.get("name")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(name, str) or not name:
        c.add(f"tools[{i}].function.name", "must be a non-empty string")
        return None
    if not isinstance(params, dict):
        c.add(f"tools[{i}].function.parameters", "must be a JSON schema object")
        return None
    return {"name": name, "description": str(fn.get("description") or ""),
            "parameters": params}


def _named_choice(c: _Collector, raw: dict[str, Any], names: set[str]) -> str:
    fn = raw.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if raw.get("type") != "function" or not isinstance(name, str):
        c.add("tool_choice", "must be 'none', 'auto', 'required' or "
              "{type: 'function', function: {name}}")
        return "none"
    if name not in names:
        c.add("tool_choice", f"names the function {name!r}, which is not in tools")
        return "none"
    return name


def tools(c: _Collector) -> Tools:
    raw = c.body.get("tools")
    functions: list[dict[str, Any]] = []
    if raw is not None and not isinstance(raw, list):
        c.add("tools", "must be a list of function tools")
    for i, tool in enumerate(raw if isinstance(raw, list) else []):
        fn = _function(c, i, tool)
        if fn is not None:
            functions.append(fn)
    parallel = c.boolean("parallel_tool_calls", True)
    choice_raw = c.body.get("tool_choice")
    names = {f["name"] for f in functions}
    if choice_raw is None:
        choice = "auto" if functions else "none"
    elif choice_raw in ("none", "auto", "required"):
        choice = str(choice_raw)
        if choice != "none" and not functions:
            c.add("tool_choice", f"{choice!r} needs tools")
    elif isinstance(choice_raw, dict):
        choice = _named_choice(c, choice_raw, names)
    else:
        c.add("tool_choice", "must be 'none', 'auto', 'required' or a named function")
        choice = "none"
    for legacy in ("functions", "function_call"):
        if c.body.get(legacy) is not None:
            c.add(legacy, "is deprecated and not supported: use tools and tool_choice")
    return Tools(tuple(functions), choice, parallel)


# fields accepted and not acted upon: hints that do not change the answer of this server
IGNORED_CHAT = ("user", "metadata", "prediction", "prompt_cache_key", "prompt_cache_options",
                "prompt_cache_retention", "reasoning_effort", "safety_identifier",
                "service_tier", "verbosity", "store")


def refused_chat(c: _Collector) -> None:
    """Fields a text model cannot honour: refused by name."""
    if c.body.get("audio") is not None:
        c.add("audio", "audio output is not supported (text models only)")
    modalities = c.body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        c.add("modalities", "only ['text'] is supported")
    if c.body.get("web_search_options") is not None:
        c.add("web_search_options", "web search is not supported")
    if c.body.get("moderation") is not None:
        c.add("moderation", "moderated completions are not supported")
    if c.body.get("store") is True:
        c.add("store", "completions are not stored here: store must be false")


def template_calls(calls: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """An assistant turn's tool calls as chat templates read them: each ``{id, type,
    function: {name, arguments}}`` with the arguments as an object (the JSON text parsed;
    kept as text when it does not parse)."""
    out = []
    for call in calls:
        got = call.get("function")
        fn: dict[str, Any] = got if isinstance(got, dict) else {}
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = raw
        out.append({"id": str(call.get("id") or ""), "type": "function",
                    "function": {"name": fn.get("name"), "arguments": args}})
    return tuple(out)


def tool_call_text(calls: tuple[dict[str, Any], ...]) -> str:
    """An assistant turn's tool calls (:func:`template_calls`) as the text the model is asked
    to write for them."""
    out = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
           for c in calls]
    return json.dumps(out[0] if len(out) == 1 else out)

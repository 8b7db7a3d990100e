"""The OpenAI wire format: request validation and response shapes, as pure functions.

The replica and the gateway both speak this API. Validation collects every bad field before it
answers, so a client fixes its request in one round trip; each problem names its field (the
``param`` of OpenAI's error object).
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from knative.serving import _features as ft
from knative.serving._features import Constraint, Prompt, Tools

MAX_STOP_SEQUENCES = 4

# The body field by which the gateway continues a generation another replica began; only a
# request that carries the replica's internal token may send it.
RESUME_FIELD = "surefoot_resume"


@dataclass(frozen=True)
class FieldError:
    param: str
    message: str


class RequestInvalid(Exception):
    """One or more fields of a request are invalid (HTTP 400)."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.param}: {e.message}" for e in errors))
        self.errors = errors

    @property
    def param(self) -> str | None:
        return self.errors[0].param if self.errors else None


class ModelNotFound(RequestInvalid):
    """The ``model`` named is not served here (HTTP 404, as OpenAI answers)."""

    status = 404

    def __init__(self, model: str, served: list[str]) -> None:
        message = f"model {model!r} does not exist here; served: {', '.join(served)}"
        super().__init__([FieldError("model", message)])


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Resume:
    """Continue a generation: the completion tokens it already has, the characters of their
    text the client already received, and the stream's id and creation time to keep."""

    tokens: tuple[int, ...]
    chars: int
    id: str
    created: int


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: tuple[Prompt, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    resume: Resume | None = None
    n: int = 1
    logprobs: int | None = None  # alternatives per position; None: no logprobs

    @property
    def plain(self) -> bool:
        """Whether the engine's plain text path answers it (no logprobs asked)."""
        return self.logprobs is None


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation; an assistant's tool calls and a tool result's call id are
    kept for chat templates that render them (``arguments`` as objects, as templates expect)."""

    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None
    name: str | None = None  # a tool result's function, when the conversation names it

    def as_template(self) -> dict[str, Any]:
        """The message as chat templates read it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    resume: Resume | None = None
    n: int = 1
    logprobs: int | None = None  # top_logprobs when logprobs is true; None: off
    constraint: Constraint | None = None
    tools: Tools = field(default_factory=Tools)
    # the conversation as given (tool calls and tool results kept), for chat templates that
    # render tools; ``messages`` is it as text turns, for those that do not
    turns: tuple[ChatMessage, ...] = ()

    @property
    def tool_turns(self) -> bool:
        """Whether the conversation has tool calls or tool results in it."""
        return any(m.tool_calls or m.role == "tool" for m in self.turns)

    @property
    def plain(self) -> bool:
        """Whether the engine's plain text path answers it (no logprobs, no constraint,
        no tools)."""
        return self.logprobs is None and self.constraint is None and not self.tools.active

    @property
    def resumable(self) -> bool:
        """Whether a stream of it can be continued from token ids (one choice, no logprobs,
        no tools; a format's grammar goes on past the resumed tokens)."""
        return self.n == 1 and self.logprobs is None and not self.tools.active


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[Prompt, ...]
    encoding_format: str = "float"
    dimensions: int | None = None


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024
    default_max_tokens: int = 16
    max_batch: int = 16
    max_embedding_inputs: int = 256
    max_n: int = 8


@dataclass
class _Collector:
    body: dict[str, Any]
    errors: list[FieldError] = field(default_factory=list)

    def add(self, param: str, message: str) -> None:
        self.errors.append(FieldError(param, message))

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self.body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(name, f"must be a number, got {type(value).__name__}")
            return default
        if not lo <= value <= hi:
            self.add(name, f"must be between {lo} and {hi}, got {value}")
            return default
        return float(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(name, f"must be a boolean, got {type(value).__name__}")
            return default
        return value

    def integer(self, name: str, default: int | None) -> int | None:
        value = self.body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, f"must be an integer, got {type(value).__name__}")
            return default
        return value

    def model(self, served: list[str]) -> str:
        value = self.body.get("model")
        if value is None:
            return served[0] if served else ""
        if not isinstance(value, str) or not value:
            self.add("model", "must be a non-empty string")
            return served[0] if served else ""
        return value

    def raise_if_any(self) -> None:
        if self.errors:
            raise RequestInvalid(self.errors)


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestInvalid([FieldError("body", "must be a JSON object")])
    return body


def _sampling(c: _Collector, limits: Limits, token_field: str = "max_tokens") -> SamplingParams:
    names = [token_field] if token_field in c.body else ["max_tokens", "max_completion_tokens"]
    max_tokens: int | None = None
    used = names[0]
    for name in names:
        if c.body.get(name) is not None:
            used = name
            max_tokens = c.integer(name, None)
            break
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    elif max_tokens <= 0:
        c.add(used, f"must be at least 1, got {max_tokens}")
    elif max_tokens > limits.max_tokens:
        c.add(used, f"must be at most {limits.max_tokens}, got {max_tokens}")
    stop_raw = c.body.get("stop")
    stop: tuple[str, ...] = ()
    if isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif isinstance(stop_raw, list):
        if len(stop_raw) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stop_raw):
            c.add("stop", f"must be a string or a list of at most {MAX_STOP_SEQUENCES} strings")
        else:
            stop = tuple(stop_raw)
    elif stop_raw is not None:
        c.add("stop", "must be a string or a list of strings")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=c.number("temperature", 1.0, 0.0, 2.0),
        top_p=c.number("top_p", 1.0, 0.0, 1.0),
        stop=stop,
        seed=c.integer("seed", None),
        presence_penalty=c.number("presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=c.number("frequency_penalty", 0.0, -2.0, 2.0),
    )


def _stream_options(c: _Collector, stream: bool) -> bool:
    opts = c.body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        c.add("stream_options", "must be an object")
        return False
    if not stream:
        c.add("stream_options", "is only allowed when stream is true")
        return False
    include = opts.get("include_usage", False)
    if not isinstance(include, bool):
        c.add("stream_options.include_usage", "must be a boolean")
        return False
    return include


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _resume(c: _Collector, internal: bool, stream: bool) -> Resume | None:
    """The gateway's resume field: refused from anyone without the internal token."""
    raw = c.body.get(RESUME_FIELD)
    if raw is None:
        return None
    if not internal:
        c.add(RESUME_FIELD, "is internal to the surefoot gateway; clients may not send it")
        return None
    if not stream:
        c.add(RESUME_FIELD, "is only allowed when stream is true")
        return None
    ok = (isinstance(raw, dict) and isinstance(raw.get("tokens"), list)
          and all(_is_int(t) for t in raw["tokens"]) and _is_int(raw.get("chars"))
          and isinstance(raw.get("id"), str) and _is_int(raw.get("created")))
    if not ok:
        c.add(RESUME_FIELD, "must be {tokens: [int], chars: int, id: str, created: int}")
        return None
    return Resume(tuple(raw["tokens"]), raw["chars"], raw["id"], raw["created"])


def parse_completion(body: Any, served: list[str], limits: Limits,
                     internal: bool = False) -> CompletionRequest:
    c = _Collector(_require_object(body))
    model = c.model(served)
    prompts = ft.prompts(c, "prompt", c.body.get("prompt"), limits.max_batch)
    params = _sampling(c, limits)
    n = ft.choices_n(c, limits.max_n)
    ft.best_of(c, n)
    logprobs = ft.completion_logprobs(c)
    ft.logit_bias(c)
    if len(prompts) * n > limits.max_batch:
        c.add("n", f"prompts times n must be at most {limits.max_batch}")
    stream = c.boolean("stream")
    include_usage = _stream_options(c, stream)
    echo = c.boolean("echo")
    resume = _resume(c, internal, stream)
    if resume is not None and (len(prompts) != 1 or echo or n != 1 or logprobs is not None):
        c.add(RESUME_FIELD, "needs a single prompt, n=1, no echo and no logprobs")
    if c.body.get("suffix") not in (None, ""):
        c.add("suffix", "insertion (a suffix) is not supported")
    c.raise_if_any()
    if model not in served:
        raise ModelNotFound(model, served)
    return CompletionRequest(model, prompts, params, stream, include_usage, echo, resume, n,
                             logprobs)


_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _message_content(c: _Collector, i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "refusal") and isinstance(part.get(kind), str):
                parts.append(part[kind])  # an earlier refusal reads as the text it said
            else:
                c.add(f"messages[{i}].content[{j}]", "only text parts are supported")
        return "".join(parts)
    c.add(f"messages[{i}].content", "must be a string or a list of text parts")
    return ""


def _message(c: _Collector, i: int, m: Any) -> ChatMessage | None:
    if not isinstance(m, dict):
        c.add(f"messages[{i}]", "must be an object with role and content")
        return None
    role = m.get("role")
    if role not in _ROLES:
        c.add(f"messages[{i}].role", f"must be one of {sorted(_ROLES)}, got {role!r}")
    calls = m.get("tool_calls") if role == "assistant" else None
    if calls:
        if not isinstance(calls, list) or not all(isinstance(x, dict) for x in calls):
            c.add(f"messages[{i}].tool_calls", "must be a list of tool calls")
            return None
        text = "" if m.get("content") is None else _message_content(c, i, m["content"])
        return ChatMessage("assistant", text, ft.template_calls(calls))
    if m.get("content") is None:
        c.add(f"messages[{i}].content", "is required")
        return None
    text = _message_content(c, i, m["content"])
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str):
            c.add(f"messages[{i}].tool_call_id", "is required for a tool message")
        return ChatMessage("tool", text, tool_call_id=str(call_id))
    return ChatMessage("system" if role == "developer" else str(role), text)


def _named_results(turns: list[ChatMessage]) -> tuple[ChatMessage, ...]:
    """Tool results with the name of the function whose call they answer."""
    names: dict[str, str] = {}
    out = []
    for m in turns:
        for call in m.tool_calls:
            names[str(call.get("id"))] = str(call["function"].get("name"))
        if m.role == "tool" and m.tool_call_id in names:
            m = replace(m, name=names[str(m.tool_call_id)])
        out.append(m)
    return tuple(out)


def _merged(messages: list[ChatMessage]) -> tuple[ChatMessage, ...]:
    """Consecutive turns of one role (tool results after a user turn) as one turn: chat
    templates that alternate roles refuse them otherwise."""
    out: list[ChatMessage] = []
    for m in messages:
        if out and out[-1].role == m.role and m.role in ("user", "assistant"):
            out[-1] = ChatMessage(m.role, f"{out[-1].content}\n\n{m.content}")
        else:
            out.append(m)
    return tuple(out)


def text_turns(turns: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """The conversation as plain text turns, for chat templates without tools: an assistant's
    calls as the JSON it is asked to write for them, a tool result as a user turn."""
    out: list[ChatMessage] = []
    for m in turns:
        if m.tool_calls:
            out.append(ChatMessage("assistant", ft.tool_call_text(m.tool_calls)))
        elif m.role == "tool":
            out.append(ChatMessage("user", f"Result of the tool call {m.tool_call_id}: "
                                           f"{m.content}"))
        else:
            out.append(m)
    return _merged(out)


def parse_chat(body: Any, served: list[str], limits: Limits,
               internal: bool = False) -> ChatRequest:
    c = _Collector(_require_object(body))
    model = c.model(served)
    raw = c.body.get("messages")
    messages: list[ChatMessage] = []
    if raw is None:
        c.add("messages", "is required")
    elif not isinstance(raw, list) or not raw:
        c.add("messages", "must be a non-empty list of messages")
    else:
        for i, m in enumerate(raw):
            msg = _message(c, i, m)
            if msg is not None:
                messages.append(msg)
    params = _sampling(c, limits, token_field="max_completion_tokens")
    stream = c.boolean("stream")
    include_usage = _stream_options(c, stream)
    resume = _resume(c, internal, stream)
    n = ft.choices_n(c, limits.max_n)
    logprobs = ft.chat_logprobs(c)
    ft.logit_bias(c)
    constraint = ft.response_format(c)
    tools = ft.tools(c)
    ft.refused_chat(c)
    if constraint is not None and tools.active:
        c.add("response_format", "cannot be combined with tools (tool_choice none allows it)")
    turns = _named_results(messages)
    req = ChatRequest(model, text_turns(turns), params, stream, include_usage, resume, n,
                      logprobs, constraint, tools, turns)
    if resume is not None and not req.resumable:
        c.add(RESUME_FIELD, "needs n=1, no logprobs and no tools")
    c.raise_if_any()
    if model not in served:
        raise ModelNotFound(model, served)
    return req


def parse_embedding(body: Any, served: list[str], limits: Limits) -> EmbeddingRequest:
    c = _Collector(_require_object(body))
    model = c.model(served)
    inputs = ft.prompts(c, "input", c.body.get("input"), limits.max_embedding_inputs)
    fmt = c.body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        c.add("encoding_format", f"must be 'float' or 'base64', got {fmt!r}")
    dims = c.integer("dimensions", None)
    if dims is not None and dims < 1:
        c.add("dimensions", f"must be at least 1, got {dims}")
    c.raise_if_any()
    if model not in served:
        raise ModelNotFound(model, served)
    return EmbeddingRequest(model, inputs, str(fmt), dims)


def error_body(message: str, error_type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@functools.lru_cache(maxsize=64)
def fingerprint(model: str) -> str:
    """``system_fingerprint``: the serving configuration answers come from (the model and
    this server's build of llama.cpp)."""
    import hashlib
    from importlib import metadata

    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        version = "none"
    return "fp_" + hashlib.sha256(f"{model}/{version}".encode()).hexdigest()[:10]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())

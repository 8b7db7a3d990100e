"""Structured output: ``response_format`` and tool calls, held to a llama.cpp grammar.

A JSON object, or JSON that matches a schema, is enforced while sampling by a grammar built
from the schema (llama.cpp's JSON-schema converter), so the answer parses by construction.
Tools reach the model through its own Jinja chat template when that template renders them
(it refers to ``tools``), with the conversation's tool calls and tool results as the template
reads them; a model whose template has no tools section (Gemma 3's has none) is told about
them in a system turn that lists them and says how to call one. Either way the answer is
parsed back into ``tool_calls``, as a whole or, streamed, call by call as it grows.
``tool_choice: "required"`` (a list of calls, or one without ``parallel_tool_calls``) or a
named function constrains the answer to the JSON of such calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from knative.serving._backends import Delta
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
    one = options[0] if len(options) == 1 else {"anyOf": options}
    if named or not tools.parallel:
        return _grammar_of_schema(one)
    # one call, or a list of them: a grammar of lists only keeps a small model writing calls
    # until max_tokens cuts it off
    return _grammar_of_schema({"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]})


# --- the model's own chat template ------------------------------------------------------------

def chat_template(llm: Any) -> str | None:
    """The Jinja chat template ``llm`` renders conversations with, or None when its chat
    format is not a Jinja template (a named format such as ``gemma``)."""
    handler = getattr(llm, "chat_handler", None)
    if handler is not None:
        template = getattr(handler, "chat_template", None)
        return template if isinstance(template, str) else None
    fmt = str(getattr(llm, "chat_format", "") or "")
    if not fmt.startswith("chat_template."):
        return None
    key = "tokenizer.chat_template" if fmt == "chat_template.default" else f"tokenizer.{fmt}"
    template = (getattr(llm, "metadata", None) or {}).get(key)
    return template if isinstance(template, str) else None


@functools.lru_cache(maxsize=16)
def uses_tools(template: str) -> bool:
    """Whether a Jinja chat template refers to ``tools`` (parsed as llama-cpp-python renders
    it); one that does not parse is taken as one without."""
    import jinja2
    import jinja2.ext
    from jinja2 import meta
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    env = jinja2.Environment(extensions=[Jinja2ChatFormatter.IgnoreGenerationTags,
                                         jinja2.ext.loopcontrols])
    try:
        return "tools" in meta.find_undeclared_variables(env.parse(template))
    except jinja2.TemplateError:
        return False


def renders_tools(llm: Any) -> bool:
    """Whether ``llm``'s chat template renders tools (then tools go through it)."""
    template = chat_template(llm) if llm is not None else None
    return template is not None and uses_tools(template)


def template_handler(llm: Any, template: str) -> Any:
    """A chat handler for ``llm`` (its ``chat_handler``) that renders ``template``, built as
    llama-cpp-python builds the one of a GGUF's own template, and naming its template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(token: int) -> str:
        return bytes(llm.detokenize([token], special=True)).decode("utf-8", errors="replace")

    eos, bos = int(llm.token_eos()), int(llm.token_bos())
    handler = Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos),
                                  stop_token_ids=[eos]).to_chat_handler()
    handler.chat_template = template  # type: ignore[attr-defined]
    return handler


def template_kwargs(tools: Tools) -> dict[str, Any]:
    """What a chat template that renders tools is given of them (OpenAI's forms)."""
    if not tools.active:
        return {}
    choice: Any = tools.choice
    if choice not in ("auto", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    return {"tools": [{"type": "function", "function": dict(f)} for f in tools.functions],
            "tool_choice": choice}


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
    call = ('a JSON object: {"name": <function name>, "arguments": <an object of its '
            'parameters>}')
    lines.append(f"To call a function, answer with only {call}"
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


_PROBE = "\u2063probe\u2063"
_KEEPS_SYSTEM: dict[tuple[int, str, int], bool] = {}


def keeps_system(llm: Any) -> bool:
    """Whether ``llm``'s chat format puts a system turn in the prompt (llama-cpp-python's
    ``gemma`` format drops it), found by rendering one."""
    from knative.serving._sampling import chat_spec

    key = (id(llm), str(llm.chat_format), id(llm.chat_handler))
    if key not in _KEEPS_SYSTEM:
        probe = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "?"}]
        spec = chat_spec(llm, probe, {"max_tokens": 1})
        text = bytes(llm.detokenize(list(spec.tokens))).decode("utf-8", errors="replace")
        _KEEPS_SYSTEM[key] = _PROBE in text
    return _KEEPS_SYSTEM[key]


def folded_system(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """A leading system turn put in front of the first user turn, as Gemma's own template
    does, for chat formats that would drop it."""
    if len(messages) < 2 or messages[0].role != "system" or messages[1].role != "user":
        return messages
    user = dataclasses.replace(messages[1],
                               content=f"{messages[0].content}\n\n{messages[1].content}")
    return (user, *messages[2:])


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


# --- tool calls streamed as they grow ---------------------------------------------------------

_FENCE_OPEN = re.compile(r"```(?:json)?\s*")
_ARGS = ("arguments", "parameters")


def _json_start(text: str) -> int | None:
    """Where the JSON of an answer starts (after spaces or an opening fence), None while that
    is not known yet, -1 when the answer is not JSON."""
    rest = text.lstrip()
    at = len(text) - len(rest)
    if not rest or "```json".startswith(rest):
        return None
    if rest[0] in "{[":
        return at
    fence = _FENCE_OPEN.match(rest)
    if fence is None:
        return -1
    if fence.end() == len(rest):
        return None
    return at + fence.end() if rest[fence.end()] in "{[" else -1


class _Call:
    """One call object of the answer: its name once whole, the span of its arguments."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.args: tuple[int, int | None] | None = None  # [start, end); end None while open
        self.closed = False


class _Scan:
    """One pass over the answer's JSON: the call objects in it (one object, or a list of
    them) and whether it can still be calls of the offered functions."""

    def __init__(self, text: str, start: int, names: set[str]) -> None:
        self.calls: list[_Call] = []
        self.bad = False
        self.done = False
        self._text, self._names = text, names
        self._stack: list[str] = []
        self._key: str | None = None
        self._expect = "key"  # at a call object's own level: key, colon, value, in, after
        self._scan(start)

    def _level(self) -> bool:
        """Whether the scan is inside a call object, at its own level."""
        depth = 1 if self._stack[:1] == ["{"] else 2
        return len(self._stack) == depth and self._stack[-1] == "{"

    def _scan(self, i: int) -> None:
        text = self._text
        while i < len(text) and not (self.bad or self.done):
            ch = text[i]
            if ch == '"':
                i = self._string(i)
                continue
            if ch in "{[":
                self._open(i, ch)
            elif ch in "}]":
                self._close(i)
            elif not ch.isspace():
                self._other(i, ch)
            i += 1

    def _string(self, i: int) -> int:
        text, j = self._text, i + 1
        while j < len(text) and text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        level = bool(self._stack) and self._level()
        if j >= len(text):  # still open
            if level and self._expect == "value":
                self._value_start(i)
                self._expect = "in"
            return len(text)
        if level:
            self._level_string(i, j + 1)
        elif self._stack in ([], ["["]):
            self.bad = True
        return j + 1

    def _level_string(self, i: int, end: int) -> None:
        value = json.loads(self._text[i:end])
        if self._expect == "key":
            self.bad = value not in ("name", *_ARGS)
            self._key, self._expect = value, "colon"
        elif self._expect == "value":
            self._value_start(i)
            if self._key == "name":
                self.calls[-1].name = value
                self.bad = value not in self._names
            self._value_end(end)
        else:
            self.bad = True

    def _value_start(self, i: int) -> None:
        call = self.calls[-1]
        if self._key in _ARGS and call.args is None:
            call.args = (i, None)

    def _value_end(self, end: int) -> None:
        call = self.calls[-1]
        if self._key in _ARGS and call.args is not None and call.args[1] is None:
            call.args = (call.args[0], end)
        self._expect = "after"

    def _open(self, i: int, ch: str) -> None:
        if self._stack and self._level():
            if self._expect != "value":
                self.bad = True
                return
            self._value_start(i)
            self._expect = "in"
        elif self._stack == ["["] and ch != "{":
            self.bad = True
            return
        self._stack.append(ch)
        if self._level():
            self.calls.append(_Call())
            self._expect = "key"

    def _close(self, i: int) -> None:
        if not self._stack:
            self.bad = True
            return
        was_call = self._level()
        if was_call:
            if self._expect == "in":  # a scalar value ends with its object
                self._value_end(i)
            elif self._expect != "after":
                self.bad = True
                return
            self.calls[-1].closed = True
        self._stack.pop()
        if not was_call and self._stack and self._level():
            self._value_end(i + 1)
        self.done = not self._stack

    def _other(self, i: int, ch: str) -> None:
        """Punctuation and scalars (numbers, true, false, null)."""
        if not (self._stack and self._level()):
            self.bad = self._stack in ([], ["["]) and ch != ","
        elif ch == ":" and self._expect == "colon":
            self._expect = "value"
        elif ch == "," and self._expect in ("after", "in"):
            if self._expect == "in":
                self._value_end(i)
            self._expect = "key"
        elif self._expect == "value" and ch not in ":,":
            self._value_start(i)
            self._expect = "in"
        elif self._expect != "in":
            self.bad = True


def _new_call(index: int, name: str) -> dict[str, Any]:
    return {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": ""}}


class CallStream:
    """The deltas of a tools answer with its calls streamed as OpenAI streams them: a call's
    first chunk has its index, id, type, name and empty arguments, then come fragments of its
    arguments. A ``constrained`` answer (held to a grammar of calls) is calls from its first
    token; otherwise the text is held back until it is known to be a call (a JSON call of an
    offered function, its name whole) or not (then it streams as text)."""

    def __init__(self, tools: Tools, constrained: bool) -> None:
        self.tools = tools
        self.names = {f["name"] for f in tools.functions}
        self.mode = "calls" if constrained else "undecided"  # | "calls" | "text"
        self.text = ""
        self.held: list[Any] = []  # logprob entries of the text held back
        self.sent: list[int] = []  # per call: characters of its arguments sent
        self.recognised = False
        self.complete = False  # the JSON of the calls is whole (text after it is dropped)

    def feed(self, d: Delta) -> Iterator[Delta]:
        if self.mode == "text":
            yield dataclasses.replace(d, finish_reason=None, usage=None)
            return
        self.text += d.text
        self.held.extend(d.logprobs)
        start = _json_start(self.text)
        if start is None:
            return
        scan = _Scan(self.text, start, self.names) if start >= 0 else None
        if self.mode == "undecided" and (scan is None or scan.bad):
            self.mode = "text"
            yield Delta(self.text, logprobs=tuple(self.held))
            return
        if scan is not None:
            self.complete = scan.done and not scan.bad
            yield from self._calls(scan)

    def _calls(self, scan: _Scan) -> Iterator[Delta]:
        calls = scan.calls if self.tools.parallel else scan.calls[:1]
        for k, call in enumerate(calls):
            if call.name is None:
                return
            if k == len(self.sent):
                self.mode, self.recognised = "calls", True
                self.sent.append(0)
                yield Delta("", tool_calls=(_new_call(k, call.name),))
            if call.args is None:
                continue
            start, end = call.args
            frag = self.text[start + self.sent[k]:len(self.text) if end is None else end]
            if frag:
                self.sent[k] += len(frag)
                yield Delta("", tool_calls=({"index": k, "function": {"arguments": frag}},))

    def finish(self, last: Delta) -> Iterator[Delta]:
        """The end of the answer (``last`` the final delta, its finish and usage)."""
        if self.mode == "text":
            yield Delta("", last.finish_reason or "stop", last.usage)
            return
        if not self.recognised:
            calls = parse_tool_calls(self.text, self.tools)
            if not calls:
                yield Delta(self.text, last.finish_reason or "stop", last.usage,
                            logprobs=tuple(self.held))
                return
            for k, call in enumerate(calls):
                yield Delta("", tool_calls=(_new_call(k, call["function"]["name"]),))
                yield Delta("", tool_calls=({"index": k, "function": {
                    "arguments": call["function"]["arguments"]}},))
        complete = self.complete or not self.recognised
        finish = "length" if last.finish_reason == "length" and not complete else "tool_calls"
        yield Delta("", finish, last.usage)


def streamed_calls(deltas: Iterator[Delta], tools: Tools, constrained: bool
                   ) -> Iterator[Delta]:
    """A tools answer's deltas with its calls as ``tool_calls`` fragments (:class:`CallStream`)
    and ``finish_reason: "tool_calls"`` when it makes any."""
    stream = CallStream(tools, constrained)
    last = Delta("")
    for d in deltas:
        last = d
        yield from stream.feed(d)
    yield from stream.finish(last)

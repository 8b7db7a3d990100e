"""The choices of one completion or chat request, and how each is generated.

A request asks for ``n`` choices of each prompt (``best_of`` equal to ``n``): each is one
generation, with the request's seed moved by its index so seeded choices differ yet repeat.
A choice that asks nothing more than text runs on the backend's plain path, untouched; one that
asks for logprobs, a ``response_format`` or tools runs token by token
(:meth:`knative.serving.LlamaCppBackend.token_stream`) with the grammar those impose, and its
answer is shaped here: logprobs in the endpoint's format, tool calls parsed out of the text
(streamed, call by call as they grow). A conversation reaches the model through its chat
template with its tools and tool turns when that template renders tools, else as text turns
with the tools described in a system turn. The prompt is counted once in the usage however
many choices it has.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol, cast

from knative.serving import _openai as oa
from knative.serving import _tools as tl
from knative.serving._backends import Delta, GenerationBackend
from knative.serving._features import Prompt, Tools
from knative.serving._logprobs import CompletionLogprobs, chat_entries, chat_logprobs
from knative.serving._sampling import SeqSpec
from knative.serving._stream import Formatter

Item = tuple[Any, oa.SamplingParams, int]  # (prompt or messages, sampling, choice of it)


class TokenBackend(Protocol):
    """What the token-by-token path needs of a generation backend."""

    def spec(self, request: Any, params: oa.SamplingParams, grammar: Any = None,
             template: dict[str, Any] | None = None) -> SeqSpec: ...

    def token_stream(self, spec: SeqSpec, top: int | None) -> Iterator[Delta]: ...

    def prompt_logprobs(self, spec: SeqSpec, top: int) -> list[Any]: ...

    def decode(self, ids: tuple[int, ...]) -> str: ...


def _items(inputs: tuple[Any, ...], params: oa.SamplingParams, n: int) -> tuple[Item, ...]:
    out = []
    for x in inputs:
        for j in range(n):
            p = params if j == 0 or params.seed is None else replace(params, seed=params.seed + j)
            out.append((x, p, j))
    return tuple(out)


def _later(deltas: Iterator[Delta], j: int) -> Iterator[Delta]:
    """The prompt counted with the first choice only."""
    for d in deltas:
        yield replace(d, usage=(0, d.usage[1])) if j and d.usage else d


def _joined(deltas: Iterator[Delta]) -> tuple[str, Delta, list[Any], tuple[Any, ...]]:
    """Text, last delta, every logprob entry and the tool calls of a whole generation."""
    texts: list[str] = []
    entries: list[Any] = []
    calls: tuple[dict[str, Any], ...] = ()
    last = Delta("")
    for d in deltas:
        texts.append(d.text)
        entries.extend(d.logprobs)
        calls = d.tool_calls or calls
        last = d
    return "".join(texts), last, entries, calls


def _tool_answer(deltas: Iterator[Delta], tools: Tools) -> Iterator[Delta]:
    """A tools answer, whole: its calls when it makes any (finish ``tool_calls``), else
    its text."""
    text, last, entries, _ = _joined(deltas)
    calls = tl.parse_tool_calls(text, tools)
    if calls:
        yield Delta("", "tool_calls", last.usage, tool_calls=tuple(calls))
    else:
        yield Delta(text, last.finish_reason or "stop", last.usage, logprobs=tuple(entries))


class Choices:
    """Runs the choices of requests on one generation backend."""

    def __init__(self, backend: GenerationBackend) -> None:
        self.backend = backend
        self.tokens = cast(TokenBackend, backend)
        # an engine that decodes sequences together streams choices side by side
        self.side_by_side = int(getattr(backend, "slots", 1)) > 1

    # --- completions ------------------------------------------------------------------------
    def completion_items(self, req: oa.CompletionRequest) -> tuple[Item, ...]:
        return _items(req.prompts, req.params, req.n)

    def prompt_text(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else self.tokens.decode(prompt)

    def completion(self, req: oa.CompletionRequest, item: Item) -> Iterator[Delta]:
        prompt, params, j = item
        if req.plain:
            deltas = self.backend.stream_complete(prompt, params)
            head = [Delta(self.prompt_text(prompt))] if req.echo else []
        else:
            spec = self.tokens.spec(prompt, params)
            deltas = self.tokens.token_stream(spec, req.logprobs)
            head = []
            if req.echo:
                entries = self.tokens.prompt_logprobs(spec, req.logprobs or 0)
                head = [Delta(self.prompt_text(prompt), logprobs=tuple(entries))]
        return _later(itertools.chain(head, deltas), j)

    def completion_formatter(self, req: oa.CompletionRequest,
                             items: tuple[Item, ...]) -> Formatter | None:
        if req.logprobs is None:
            return None

        def for_choice(index: int) -> Callable[[Delta], Any]:
            offset = 0 if req.echo else len(self.prompt_text(items[index][0]))
            lp = CompletionLogprobs(offset)
            return lambda d: lp.of(d.logprobs)

        return for_choice

    def completion_whole(self, req: oa.CompletionRequest, item: Item,
                         index: int) -> tuple[dict[str, Any], tuple[int, int]]:
        prompt, params, j = item
        if req.plain:
            out = self.backend.complete(prompt, params, echo=req.echo)
            choice = {"index": index, "text": out.text, "logprobs": None,
                      "finish_reason": out.finish_reason}
            return choice, (0 if j else out.prompt_tokens, out.completion_tokens)
        text, last, entries, _ = _joined(self.completion(req, item))
        offset = 0 if req.echo else len(self.prompt_text(prompt))
        lp = CompletionLogprobs(offset).of(entries) if req.logprobs is not None else None
        choice = {"index": index, "text": text, "logprobs": lp,
                  "finish_reason": last.finish_reason or "stop"}
        return choice, last.usage or (0, 0)

    # --- chat -------------------------------------------------------------------------------
    def chat_items(self, req: oa.ChatRequest) -> tuple[Item, ...]:
        return _items((req.messages,), req.params, req.n)

    def renders_tools(self, req: oa.ChatRequest) -> bool:
        """Whether the model's chat template renders this request's tools and tool turns."""
        return ((req.tools.active or req.tool_turns)
                and tl.renders_tools(getattr(self.backend, "llm", None)))

    def chat_spec(self, req: oa.ChatRequest, item: Item) -> SeqSpec:
        """The engine request of a chat choice run token by token: the conversation through
        the chat template with its tools when the template renders them, else as text turns
        told of the tools (or of the format) in a system turn."""
        messages, params, _ = item
        grammar = tl.grammar(req.constraint, req.tools)
        if self.renders_tools(req):
            turns = tl.with_instructions(req.turns, tl.constraint_text(req.constraint))
            return self.tokens.spec(turns, params, grammar, tl.template_kwargs(req.tools))
        note = tl.tools_text(req.tools) if req.tools.active else tl.constraint_text(
            req.constraint)
        turns = tl.with_instructions(messages, note)
        llm = getattr(self.backend, "llm", None)
        if note and llm is not None and not tl.keeps_system(llm):
            turns = tl.folded_system(turns)
        return self.tokens.spec(turns, params, grammar)

    def _chat_tokens(self, req: oa.ChatRequest, item: Item) -> Iterator[Delta]:
        deltas = self.tokens.token_stream(self.chat_spec(req, item), req.logprobs)
        return _later(deltas, item[2])

    def _plain(self, req: oa.ChatRequest) -> bool:
        return req.plain and not self.renders_tools(req)

    def chat(self, req: oa.ChatRequest, item: Item) -> Iterator[Delta]:
        """A streamed chat choice; a tools answer's calls come as they grow."""
        messages, params, j = item
        if self._plain(req):
            return _later(self.backend.stream_chat(messages, params), j)
        deltas = self._chat_tokens(req, item)
        if req.tools.active:
            deltas = tl.streamed_calls(deltas, req.tools, req.tools.choice != "auto")
        return deltas

    @staticmethod
    def chat_formatter(req: oa.ChatRequest) -> Formatter | None:
        if req.logprobs is None:
            return None
        return lambda index: lambda d: {"content": chat_entries(d.logprobs), "refusal": None}

    def chat_whole(self, req: oa.ChatRequest, item: Item,
                   index: int) -> tuple[dict[str, Any], tuple[int, int]]:
        messages, params, j = item
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if self._plain(req):
            out = self.backend.chat(messages, params)
            message["content"] = out.text
            choice = {"index": index, "finish_reason": out.finish_reason, "logprobs": None,
                      "message": message}
            return choice, (0 if j else out.prompt_tokens, out.completion_tokens)
        deltas = self._chat_tokens(req, item)
        if req.tools.active:
            deltas = _tool_answer(deltas, req.tools)
        text, last, entries, calls = _joined(deltas)
        if calls:
            message["tool_calls"] = list(calls)
        else:
            message["content"] = text
        choice = {"index": index, "finish_reason": last.finish_reason or "stop",
                  "logprobs": chat_logprobs(entries) if req.logprobs is not None else None,
                  "message": message}
        return choice, last.usage or (0, 0)

"""Model backends behind one small interface: llama.cpp for generation, torch for embeddings.

A replica holds one instance of each configured model. Generation engines are not re-entrant,
so each backend serialises its calls with a lock whose wait is bounded: a request that cannot get
the engine in time is refused (HTTP 503), never left to pile up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from knative.serving._engine import BatchEngine, EngineFault, EngineTimeout
from knative.serving._features import Prompt
from knative.serving._layouts import plain_layouts, repacked, rows_agree
from knative.serving._models import DEFAULT_EMBEDDING_MODEL as DEFAULT_EMBEDDING_MODEL
from knative.serving._models import DEFAULT_GENERATION_MODEL as DEFAULT_GENERATION_MODEL
from knative.serving._models import DEFAULT_SLOTS as DEFAULT_SLOTS
from knative.serving._models import BackendError as BackendError
from knative.serving._models import ModelLoadError as ModelLoadError
from knative.serving._models import generation_model_id as generation_model_id
from knative.serving._models import resolve_gguf as resolve_gguf
from knative.serving._openai import ChatMessage, SamplingParams
from knative.serving._sampling import (
    SeqSpec,
    chat_spec,
    completion_spec,
    prompt_ids,
    sampler_factory,
)
from knative.serving._serial import SerialEngine as _Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

class EngineBusy(BackendError):
    """The engine stayed busy longer than the queue timeout (HTTP 503, retry)."""


class ContextOverflow(BackendError):
    """Prompt plus ``max_tokens`` do not fit in the context window (HTTP 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Delta:
    """A piece of generated text; the last one carries ``finish_reason``."""

    text: str
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens, on the last delta
    tokens: tuple[int, ...] = ()  # the completion token ids it adds (resumable streams)
    logprobs: tuple[Any, ...] = ()  # a TokenOut per token it adds, when asked for
    tool_calls: tuple[dict[str, Any], ...] = ()  # the calls an answer makes (chat with tools)


@dataclass(frozen=True)
class Generation:
    """A whole, non-streamed generation with exact token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class GenerationBackend(Protocol):
    model_id: str

    @property
    def n_ctx(self) -> int: ...

    def load(self) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def complete(self, prompt: Prompt, params: SamplingParams,
                 echo: bool = False) -> Generation: ...

    def stream_complete(self, prompt: Prompt, params: SamplingParams) -> Iterator[Delta]: ...

    def chat(self, messages: tuple[ChatMessage, ...], params: SamplingParams) -> Generation: ...

    def stream_chat(
        self, messages: tuple[ChatMessage, ...], params: SamplingParams
    ) -> Iterator[Delta]: ...

    def save_state(self) -> dict[str, bytes]: ...

    def load_state(self, blobs: dict[str, bytes]) -> None: ...


class EmbeddingBackend(Protocol):
    model_id: str
    dimensions: int

    def load(self) -> None: ...

    def embed(self, inputs: tuple[Prompt, ...]) -> tuple[list[list[float]], int]: ...


class LlamaCppBackend:
    """GGUF generation on llama-cpp-python; ``n_gpu_layers`` offloads to a GPU node.

    With ``slots`` above 1, requests run on a :class:`BatchEngine` that decodes up to that
    many sequences in each step; with 1, each request has the engine to itself.

    Every llama.cpp call that computes runs on one thread (:meth:`_native`): a second live
    OpenMP team makes libgomp shorten its barriers' spin, and one probe decode on another
    thread made each later one-row decode cost 34 ms instead of 21 (docs/engine.md).
    """

    def __init__(  # noqa: PLR0913 - a keyword per replica setting of the engine
        self,
        model: str = DEFAULT_GENERATION_MODEL,
        model_id: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        queue_timeout: float = 60.0,
        chat_format: str = "",
        slots: int = DEFAULT_SLOTS,
        batch_invariant: bool = True,
        flash_attn: bool = True,
        gather_ms: float = 2.0,
        prompt_cache_mb: int = 0,
    ) -> None:
        self.model = model
        self.flash_attn = flash_attn
        self.slots = slots
        self.chat_format = chat_format
        self.model_id = model_id or generation_model_id(model)
        self._n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_gpu_layers = n_gpu_layers
        self._engine = _Engine(f"engine-{self.model_id}", queue_timeout)
        self._batcher = (BatchEngine(f"batch-{self.model_id}", slots, queue_timeout,
                                     invariant=batch_invariant, gather_quiet=gather_ms / 1000,
                                     host_cache_bytes=prompt_cache_mb << 20)
                         if slots > 1 else None)
        self._llm: Any = None
        self._prompt_cache: Any = None  # what the single-sequence context read last
        self.model_path: Path | None = None

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelLoadError("llama-cpp-python is not installed (make install)") from exc
        self.model_path = resolve_gguf(self.model)
        self._native(lambda: self._load(Llama))
        if self._batcher is not None:
            self._batcher.attach(self._llm, self._n_ctx)

    def shared_thread(self) -> Callable[[Callable[[], Any]], Any] | None:
        """What runs another model's CPU work (embeddings) on the batching engine's thread
        between steps (class docstring); None on the single-sequence engine."""
        return self._batcher.call if self._batcher is not None else None

    def _native(self, fn: Callable[[], T]) -> T:
        """``fn``'s result, run on the thread of this replica's llama.cpp calls."""
        result: T = (self._batcher.call(fn) if self._batcher is not None
                     else self._engine.call(fn))
        return result

    def _load(self, Llama: Any) -> None:
        assert self.model_path is not None
        # the CPU's repacked weight layouts where their kernels give a row the same result
        # alone or among others (the project's build of llama.cpp, :mod:`._layouts`), the plain
        # ones where not: there they split the rows classes once more (a prompt started from a
        # cached prefix changed 1 greedy text in 60). Only a batching engine with invariance
        # off keeps repacked layouts that do not agree, as llama-server does
        invariant = self._batcher is None or self._batcher.invariant
        try:
            self._llm = self._new_llm(Llama, plain=False)
            if invariant and repacked(self._llm) and not rows_agree(self._llm):
                log.info("%s: the repacked weights' kernels do not agree by rows on this "
                         "build; loading the plain layouts", self.model_id)
                self._llm.close()
                self._llm = self._new_llm(Llama, plain=True)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        meta = self._llm.metadata or {}
        if self.chat_format:
            self._llm.chat_format = self.chat_format
        elif "tokenizer.chat_template" not in meta and str(
            meta.get("general.architecture", "")
        ).startswith("gemma"):
            # GGUFs without an embedded template would fall back to llama-2's prompt format.
            self._llm.chat_format = "gemma"

    def _new_llm(self, Llama: Any, plain: bool) -> Any:
        with plain_layouts(plain):
            return Llama(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                flash_attn=self.flash_attn,
                verbose=False,
            )

    @property
    def llm(self) -> Any:
        if self._llm is None:
            raise BackendError("model not loaded")
        return self._llm

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _check_fits(self, prompt: Prompt, params: SamplingParams) -> int:
        if isinstance(prompt, tuple) and max(prompt) >= self.llm.n_vocab():
            raise ContextOverflow("prompt", f"prompt: token id {max(prompt)} is not in the "
                                  f"vocabulary ({self.llm.n_vocab()} tokens)")
        n = (len(prompt_ids(self.llm, prompt)) if isinstance(prompt, tuple)
             else self.count_tokens(prompt))
        if n >= self._n_ctx:
            raise ContextOverflow(
                "prompt", f"prompt is {n} tokens; the context window is {self._n_ctx} tokens"
            )
        if n + params.max_tokens > self._n_ctx:
            raise ContextOverflow(
                "max_tokens",
                f"prompt ({n} tokens) plus max_tokens ({params.max_tokens}) exceed the context "
                f"window of {self._n_ctx} tokens",
            )
        return n

    @staticmethod
    def _kwargs(params: SamplingParams) -> dict[str, Any]:
        return {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": params.seed,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
        }

    def engine_stats(self) -> dict[str, int]:
        """Slots in use, requests waiting for one, the last step's batch, prompt tokens
        computed and reused (all zero without a batching engine)."""
        from dataclasses import asdict

        return asdict(self._batcher.stats) if self._batcher is not None else {}

    def _batched(self, spec: SeqSpec, sampler: Any = None) -> Iterator[Delta]:
        """The deltas of ``spec`` on the batching engine; closing it frees the slot."""
        assert self._batcher is not None
        try:
            pieces = self._batcher.generate(spec, sampler or sampler_factory(self.llm, spec))
        except EngineTimeout as exc:
            raise EngineBusy(str(exc)) from None
        try:
            for text, finish, counts in pieces:
                yield Delta(text, finish, counts)
        except EngineFault as exc:
            raise BackendError(str(exc)) from exc
        finally:
            pieces.close()

    def generate(self, spec: SeqSpec) -> Iterator[Delta]:
        """The deltas of one engine request (say, with a grammar) on the batching engine."""
        return self._batched(spec)

    @staticmethod
    def _joined(deltas: Iterator[Delta], prefix: str = "") -> Generation:
        texts, last = [prefix], Delta("")
        for d in deltas:
            texts.append(d.text)
            last = d
        prompt, completion = last.usage or (0, 0)
        return Generation("".join(texts), last.finish_reason or "stop", prompt, completion)

    def _chat_spec(self, messages: tuple[ChatMessage, ...], params: SamplingParams,
                   template: dict[str, Any] | None = None) -> SeqSpec:
        try:  # template: what else the chat template is given (tools)
            spec = chat_spec(self.llm, self._messages(messages),
                             {**self._kwargs(params), **(template or {})})
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        if len(spec.tokens) >= self._n_ctx:
            raise ContextOverflow("messages", f"messages: {len(spec.tokens)} tokens exceed the "
                                  f"context window of {self._n_ctx} tokens")
        return spec

    def complete(self, prompt: Prompt, params: SamplingParams, echo: bool = False) -> Generation:
        self._check_fits(prompt, params)
        kwargs = self._kwargs(params)
        if self._batcher is not None:
            spec = completion_spec(self.llm, prompt, kwargs, echo=echo)
            return self._joined(self._batched(spec), spec.echo_prefix)
        ids = isinstance(prompt, tuple)
        text: Any = prompt_ids(self.llm, prompt) if isinstance(prompt, tuple) else prompt
        out = self._engine.call(  # create_completion cannot echo ids: their text goes first
            lambda: self.llm.create_completion(text, echo=echo and not ids, **kwargs))
        choice = out["choices"][0]
        usage = out["usage"]
        head = self.decode(prompt) if echo and isinstance(prompt, tuple) else ""
        return Generation(
            head + choice["text"], choice["finish_reason"] or "stop",
            usage["prompt_tokens"], usage["completion_tokens"],
        )

    def _with_usage(self, deltas: Iterator[Delta], prompt_tokens: int | None) -> Iterator[Delta]:
        """Pass deltas through, putting token counts on the last one.

        Completion tokens are those of the generated text; without a known prompt count (chat,
        whose template the engine applies) it is what the engine evaluated beyond them.
        """
        last: Delta | None = None
        texts: list[str] = []
        for d in deltas:
            if last is not None:
                yield last
            texts.append(d.text)
            last = d
        if last is None:
            return
        text = "".join(texts)
        completion = (
            len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            if text else 0
        )
        if prompt_tokens is None:
            prompt_tokens = max(0, int(self.llm.n_tokens) - completion + 1)
        yield Delta(last.text, last.finish_reason, (prompt_tokens, completion))

    def stream_complete(self, prompt: Prompt, params: SamplingParams) -> Iterator[Delta]:
        n_prompt = self._check_fits(prompt, params)
        kwargs = self._kwargs(params)
        if self._batcher is not None:
            return self._batched(completion_spec(self.llm, prompt, kwargs))
        text: Any = prompt_ids(self.llm, prompt) if isinstance(prompt, tuple) else prompt

        def run() -> Iterator[Delta]:
            chunks = self.llm.create_completion(text, stream=True, **kwargs)
            yield from self._with_usage(
                (Delta(c["choices"][0].get("text") or "", c["choices"][0].get("finish_reason"))
                 for c in chunks),
                n_prompt,
            )

        return self._engine.stream(run)

    def _messages(self, messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
        from knative.serving import _tools as tl

        if messages and messages[0].role == "system" and not tl.keeps_system(self.llm):
            messages = tl.folded_system(messages)  # a format that would drop it
        return [m.as_template() for m in messages]

    def _chat_call(self, messages: tuple[ChatMessage, ...], params: SamplingParams,
                   stream: bool) -> Any:
        try:
            return self.llm.create_chat_completion(
                self._messages(messages), stream=stream, **self._kwargs(params)
            )
        except ValueError as exc:
            if "context window" in str(exc):
                raise ContextOverflow("messages", f"messages: {exc}") from exc
            raise BackendError(str(exc)) from exc

    def chat(self, messages: tuple[ChatMessage, ...], params: SamplingParams) -> Generation:
        if self._batcher is not None:
            return self._joined(self._batched(self._chat_spec(messages, params)))
        out = self._engine.call(lambda: self._chat_call(messages, params, stream=False))
        choice = out["choices"][0]
        usage = out["usage"]
        return Generation(
            choice["message"].get("content") or "", choice["finish_reason"] or "stop",
            usage["prompt_tokens"], usage["completion_tokens"],
        )

    def stream_chat(
        self, messages: tuple[ChatMessage, ...], params: SamplingParams
    ) -> Iterator[Delta]:
        if self._batcher is not None:
            return self._batched(self._chat_spec(messages, params))

        def deltas(chunks: Iterator[Any]) -> Iterator[Delta]:
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason")
                if text or finish:
                    yield Delta(text, finish)

        def run() -> Iterator[Delta]:
            chunks = self._chat_call(messages, params, stream=True)
            try:
                yield from self._with_usage(deltas(chunks), None)
            except ValueError as exc:
                if "context window" in str(exc):
                    raise ContextOverflow("messages", f"messages: {exc}") from exc
                raise

        return self._engine.stream(run)

    def stream_tokens(self, prompt: Prompt | tuple[ChatMessage, ...], params: SamplingParams,
                      resumed: tuple[int, ...] = (), sent_chars: int = 0,
                      spec: SeqSpec | None = None) -> Iterator[Delta]:
        """A stream whose deltas carry the completion token ids they add, continuing from
        ``resumed`` (of whose text the client has ``sent_chars`` characters): what lets the
        gateway resume it on another replica (:mod:`knative.serving._continuation`). ``spec``
        is the engine request when it is more than the prompt's (a grammar); its sampling,
        grammar included, goes on from the resumed tokens."""
        from dataclasses import replace

        from knative.serving import _continuation as cn
        from knative.serving import _tokens as tk

        llm = self.llm
        spec = spec or self.spec(prompt, params)
        cont = cn.continuation(llm, spec.tokens, spec.stop, spec.max_tokens, resumed, sent_chars)
        if cont.finish is not None:
            return cn.deltas(cont, iter(()))
        spec = replace(spec, tokens=spec.tokens + tuple(cont.generated),
                       max_tokens=cont.remaining, stop=(), decoded_from=len(spec.tokens))
        build = tk.sampler_builder(llm, spec)
        if self._batcher is None:
            return cn.deltas(cont, self._engine.stream(lambda: (
                [t.id for t in run] for run in self._serial(llm, spec, None, build))))
        ids: list[int] = []
        signals = self._batched(spec, lambda: cn.Recorder(build(), ids))
        return cn.deltas(cont, cn.recorded(signals, ids))

    def _serial(self, llm: Any, spec: SeqSpec, reader: Any, build: Any) -> Iterator[Any]:
        """The single-sequence tokens of ``spec`` for the engine job running now (call on
        the engine thread), from the prompt the job before it read where it shares it."""
        from knative.serving import _tokens as tk

        return tk.serial_tokens(llm, spec, reader, build, self._prompt(),
                                self._engine.jobs_started)

    def _prompt(self) -> Any:
        """What the single-sequence context read last (:class:`_tokens.PromptCache`)."""
        from knative.serving import _tokens as tk

        if self._prompt_cache is None:
            self._prompt_cache = tk.PromptCache()
        return self._prompt_cache

    def spec(self, request: Prompt | tuple[ChatMessage, ...], params: SamplingParams,
             grammar: Any = None, template: dict[str, Any] | None = None) -> SeqSpec:
        """The engine request of a prompt (text or ids) or a conversation, checked to fit."""
        from dataclasses import replace

        if isinstance(request, str) or (request and isinstance(request[0], int)):
            prompt: Any = request
            self._check_fits(prompt, params)
            spec = completion_spec(self.llm, prompt, self._kwargs(params))
        else:
            spec = self._chat_spec(tuple(request), params, template)  # type: ignore[arg-type]
        return replace(spec, grammar=grammar) if grammar is not None else spec

    def decode(self, ids: tuple[int, ...]) -> str:
        """The text of token ids (a prompt given as ids, as ``echo`` repeats it)."""
        return bytes(self.llm.detokenize(prompt_ids(self.llm, ids))).decode(
            "utf-8", errors="replace")

    def token_stream(self, spec: SeqSpec, top: int | None) -> Iterator[Delta]:
        """The deltas of ``spec`` token by token, each with a TokenOut per token it adds
        (log probabilities with ``top`` alternatives when ``top`` is not None)."""
        from knative.serving import _continuation as cn
        from knative.serving import _tokens as tk

        llm = self.llm
        reader = tk.LogprobReader(llm, top) if top is not None else None
        cont = tk.new_continuation(llm, spec)
        build = tk.sampler_builder(llm, spec)
        if self._batcher is None:
            return tk.deltas(cont, self._engine.stream(
                lambda: self._serial(llm, spec, reader, build)))
        out: list[Any] = []
        signals = self._batched(spec, lambda: tk.LogprobSampler(build(), reader, out))
        return tk.deltas(cont, cn.recorded(signals, out))

    def prompt_logprobs(self, spec: SeqSpec, top: int) -> list[Any]:
        """A TokenOut for each prompt token of ``spec`` after BOS (on the single-sequence
        context, which the batching engine leaves idle, from the engine thread)."""
        from knative.serving import _tokens as tk

        llm = self.llm
        reader = tk.LogprobReader(llm, top)
        result: list[Any] = self._native(
            lambda: tk.prompt_logprobs(llm, list(spec.tokens), reader))
        return result

    def save_state(self) -> dict[str, bytes]:
        """The engine's runtime state as raw bytes: llama.cpp's state (KV cache), the evaluated
        tokens, and the logits of the last one (all a continuation needs)."""
        import numpy as np

        if self._batcher is not None:
            try:
                return self._batcher.save_state()
            except EngineFault as exc:
                raise BackendError(str(exc)) from exc

        def grab() -> dict[str, bytes]:
            # Llama.save_state would copy every evaluated token's logits (1 MB a token for
            # Gemma's vocabulary) while holding the engine; only the last row is needed.
            import ctypes

            import llama_cpp

            llm = self.llm
            ctx = llm._ctx.ctx
            size = int(llama_cpp.llama_state_get_size(ctx))
            buf = (ctypes.c_uint8 * size)()
            n_bytes = int(llama_cpp.llama_state_get_data(ctx, buf, size))
            if n_bytes > size:
                raise BackendError("llama.cpp returned more state than it announced")
            n = int(llm.n_tokens)
            last = (np.array(llm.scores[n - 1], dtype=np.float32) if n
                    else np.zeros(0, dtype=np.float32))
            return {
                "llama_state": ctypes.string_at(buf, n_bytes),
                "input_ids": np.asarray(llm.input_ids[:n], dtype=np.int32).tobytes(),
                "last_logits": last.tobytes(),
                # how many of them were read as a prompt (a next prompt may start past them)
                "prompt_exact": str(min(n, self._prompt().held(
                    self._engine.jobs_started))).encode(),
            }

        blobs: dict[str, bytes] = self._engine.call(grab)
        return blobs

    def load_state(self, blobs: dict[str, bytes]) -> None:
        """Put back a state from :meth:`save_state` (same model, same context size)."""
        import numpy as np

        if self._batcher is not None:
            self._load_batch_state(blobs)
            return
        try:
            ids = np.frombuffer(blobs["input_ids"], dtype=np.int32).astype(np.intc)
            last = np.frombuffer(blobs["last_logits"], dtype=np.float32)
            raw = blobs["llama_state"]
        except KeyError as exc:
            raise BackendError(f"engine state lacks {exc}") from exc
        n = len(ids)
        try:  # a checkpoint from before the prompt cache: nothing is known to be exact
            exact = max(0, int(blobs.get("prompt_exact", b"0")))
        except ValueError as exc:
            raise BackendError("engine state has a bad prompt_exact") from exc
        n_vocab = self.llm.n_vocab()
        if n > self._n_ctx or (n and last.shape != (n_vocab,)):
            raise BackendError("engine state does not match this model and context size")
        def put_back() -> None:
            # Llama.load_state would also scan its whole logits matrix (n_batch x n_vocab,
            # 512 MB for Gemma) to zero rows past n_tokens, faulting in every page of a fresh
            # process; those rows are never read before being written, so only the rows in
            # use are set here, then the engine state itself.
            import ctypes

            import llama_cpp

            llm = self.llm
            if n:
                llm.scores[n - 1, :] = last
            llm.input_ids[:n] = ids
            llm.n_tokens = n
            buf = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
            cache = self._prompt()
            cache.restored(self._engine.jobs_started, ())
            if llama_cpp.llama_state_set_data(llm._ctx.ctx, buf, len(raw)) != len(raw):
                raise BackendError("llama.cpp refused the engine state")
            cache.restored(self._engine.jobs_started, tuple(int(t) for t in ids[:exact]))

        self._engine.call(put_back)

    def _load_batch_state(self, blobs: dict[str, bytes]) -> None:
        import json

        assert self._batcher is not None
        if "slot_tokens" not in blobs or "llama_state" not in blobs:
            raise BackendError("engine state is not of a batching engine")
        try:
            exact = json.loads(blobs["slot_exact"]) if "slot_exact" in blobs else None
            self._batcher.load_state(blobs["llama_state"], json.loads(blobs["slot_tokens"]),
                                     exact)
        except (EngineFault, ValueError) as exc:
            raise BackendError(str(exc)) from exc

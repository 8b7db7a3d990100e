"""Generation token by token, for requests the plain text path cannot answer: log
probabilities of each sampled token (and of the prompt's, for ``echo``), and output held to a
grammar (JSON, a JSON schema, a tool call).

The plain path (llama-cpp-python's ``create_completion``, or the batching engine's text
pieces) stays as it is, so requests without these features pay nothing for them. Here the
sampled ids are turned into text by the same :class:`~knative.serving._continuation.Continuation`
rules (stop sequences on the bytes, split characters held back), and each id comes with its
log probability read from the very logits it was sampled from: llama.cpp keeps the last
decoded row, so nothing needs ``logits_all``.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from knative.serving._backends import Delta
from knative.serving._continuation import Continuation, continuation
from knative.serving._engine import PREFILL_ROWS
from knative.serving._sampling import common_prefix, sampler_factory


@dataclass(frozen=True)
class TokenOut:
    """One token: its id, its bytes, its log probability and the ``top`` alternatives at its
    position (bytes, log probability), most likely first."""

    id: int
    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


def piece(vocab: Any, token: int) -> bytes:
    """The bytes of one token as it reads in running text (its leading space kept)."""
    import llama_cpp

    buf = ctypes.create_string_buffer(64)
    n = int(llama_cpp.llama_token_to_piece(vocab, token, buf, 64, 0, False))
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = int(llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, False))
    return buf.raw[:max(0, n)]


class LogprobReader:
    """Log probabilities (a log-softmax of the raw logits) of a token and its ``k`` best
    alternatives, read from a llama.cpp context's logits row."""

    def __init__(self, llm: Any, k: int) -> None:
        self.k = k
        self.vocab = llm._model.vocab
        self.n_vocab = int(llm.n_vocab())

    def row(self, logits: Any, token: int) -> TokenOut:
        import numpy as np

        row = np.asarray(logits, dtype=np.float64)
        top = row.max()
        lse = float(top + math.log(float(np.exp(row - top).sum())))
        alts: tuple[tuple[bytes, float], ...] = ()
        if self.k:
            best = np.argpartition(-row, self.k)[:self.k]
            best = best[np.argsort(-row[best], kind="stable")]
            alts = tuple((piece(self.vocab, int(t)), float(row[t]) - lse) for t in best)
        return TokenOut(token, piece(self.vocab, token), float(row[token]) - lse, alts)

    def at(self, ctx: Any, idx: int, token: int) -> TokenOut:
        """The entry of ``token`` sampled from row ``idx`` (-1: the last) of ``ctx``."""
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(ctx, idx)
        return self.row(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)), token)


class LogprobSampler:
    """A sampler chain (of the batching engine) that also records each token it samples
    with its log probabilities, in order (read from another thread: appends are atomic)."""

    def __init__(self, inner: Any, reader: LogprobReader | None, out: list[TokenOut]) -> None:
        self._inner = inner
        self._reader = reader
        self._out = out

    def sample(self, ctx: Any, idx: int) -> int:
        token = int(self._inner.sample(ctx, idx))
        if self._reader is not None:
            self._out.append(self._reader.at(ctx.ctx, idx, token))
        else:
            self._out.append(TokenOut(token, b"", 0.0))
        return token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def sampler_builder(llm: Any, spec: Any) -> Callable[[], Any]:
    """A builder of the sampler of ``spec`` (call it on the engine thread): its chain, and
    its grammar checked on the chain's pick first (:class:`GrammarSampler`)."""
    from dataclasses import replace

    from knative.serving._grammar import GrammarSampler

    build = sampler_factory(llm, replace(spec, grammar=None))
    if spec.grammar is None:
        return build
    resumed = tuple(spec.tokens[spec.decoded_from:]) if spec.decoded_from is not None else ()
    return lambda: GrammarSampler(llm, build(), spec.grammar, resumed)


@dataclass
class PromptCache:
    """The leading tokens of the single-sequence context that a next prompt may start from:
    those read as a prompt in calls of at least ``PREFILL_ROWS`` rows (whatever the split,
    such rows come out as they would in one read), and the number of the engine job that
    read them. A job run in between may have changed the context: nothing is reused then."""

    tokens: tuple[int, ...] = ()
    job: int = -1

    def reusable(self, job: int, tokens: tuple[int, ...], start: int) -> int:
        """How many leading tokens of ``tokens`` (a prompt read up to ``start``) job number
        ``job`` may keep: never the whole prompt, never leaving fewer than ``PREFILL_ROWS``
        to read."""
        if self.job != job - 1 or not self.tokens:
            return 0
        n = common_prefix(self.tokens, tokens[:start - 1])
        return n if start - n >= PREFILL_ROWS else max(0, start - PREFILL_ROWS)

    def held(self, job: int) -> int:
        """How many leading tokens of the context job number ``job`` finds as they were read
        (0 when another job ran since); a job that leaves the context as it is (a snapshot)
        keeps them for the next."""
        if self.job != job - 1:
            return 0
        self.job = job
        return len(self.tokens)

    def restored(self, job: int, tokens: tuple[int, ...]) -> None:
        """Job number ``job`` put back a context whose leading ``tokens`` were read as a
        prompt (a checkpoint's)."""
        self.tokens, self.job = tokens, job


def serial_tokens(llm: Any, spec: Any, reader: LogprobReader | None,
                  make_sampler: Callable[[], Any], cache: PromptCache | None = None,
                  job: int = 0) -> Iterator[list[TokenOut]]:
    """The tokens ``llm`` samples for ``spec`` (a SeqSpec) on the single-sequence path, from
    a fresh context, each with its log probabilities when a ``reader`` is given (call on the
    engine thread). Tokens of a generation it continues (past ``spec.decoded_from``) are
    decoded one at a time, as they were when sampled, so their cache holds the same numbers
    (a prompt's rows would be computed otherwise) and what follows is what an uninterrupted
    generation gives. With a ``cache``, job number ``job`` starts from the prompt tokens the
    job before it read, where they are its own."""
    import llama_cpp

    start = len(spec.tokens) if spec.decoded_from is None else spec.decoded_from
    kept = cache.reusable(job, spec.tokens, start) if cache is not None else 0
    llm.reset()
    llm.n_tokens = kept  # the next eval drops the cells past it
    sampler = make_sampler()
    vocab = llm._model.vocab
    ctx = llm._ctx
    if cache is not None:
        cache.tokens, cache.job = (), job  # until the read below is done
    llm.eval(list(spec.tokens[kept:start]))
    if cache is not None and start - kept >= PREFILL_ROWS:
        cache.tokens = tuple(spec.tokens[:start])
    for t in spec.tokens[start:]:
        llm.eval([t])
    for n in range(1, spec.max_tokens + 1):
        t = int(sampler.sample(ctx, -1))
        yield [reader.at(ctx.ctx, -1, t) if reader is not None else TokenOut(t, b"", 0.0)]
        if n >= spec.max_tokens or llama_cpp.llama_vocab_is_eog(vocab, t):
            return
        llm.eval([t])


def deltas(cont: Continuation, runs: Iterator[list[TokenOut]]) -> Iterator[Delta]:
    """Deltas of text as runs of tokens come, each with the entries of the tokens it adds;
    an end-of-generation token is not an entry. The last delta has the finish reason."""
    pending: list[TokenOut] = []
    text = ""
    try:
        for run in runs:
            if cont.finish is not None:
                break
            before = len(cont.generated)
            text += cont.feed([t.id for t in run])
            pending.extend(run[:len(cont.generated) - before])
            if text and cont.finish is None:
                yield Delta(text, tokens=tuple(t.id for t in pending), logprobs=tuple(pending))
                pending, text = [], ""
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()
    if cont.finish is None:
        cont.finish = "length" if cont.remaining == 0 else "stop"
        text += cont.start()
    yield Delta(text, cont.finish, (len(cont.prompt), len(cont.generated)),
                tuple(t.id for t in pending), tuple(pending))


def new_continuation(llm: Any, spec: Any) -> Continuation:
    return continuation(llm, spec.tokens, spec.stop, spec.max_tokens, (), 0)


def prompt_logprobs(llm: Any, tokens: list[int], reader: LogprobReader) -> list[TokenOut]:
    """Each prompt token after the first with its log probability given those before it
    (call on the engine thread of the single-sequence ``llm``; it leaves it reset)."""
    import numpy as np

    llm.reset()
    out: list[TokenOut] = []
    n_batch = int(llm.n_batch)
    try:
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        for start in range(0, len(tokens) - 1, n_batch):
            chunk = tokens[start:start + n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            llm._ctx.decode(llm._batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(),
                                         shape=(len(chunk) * reader.n_vocab,))
            rows = rows.reshape(len(chunk), reader.n_vocab)
            for j in range(len(chunk)):
                nxt = start + j + 1
                if nxt < len(tokens):
                    out.append(reader.row(rows[j], tokens[nxt]))
    finally:
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.reset()
    return out

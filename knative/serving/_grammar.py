"""Sampling held to a grammar without paying for it at every token.

llama.cpp's grammar sampler checks every token of the vocabulary against the grammar's
stacks; with Gemma's 262,144 tokens that costs far more than the decode itself. The grammar
rarely has to act: the token the sampler chain would pick anyway is usually one the grammar
allows. So, as llama.cpp's own server does, the chain picks first from the raw logits, the
grammar checks that one token, and only when it refuses it are all candidates filtered by the
grammar and the chain picks again. The grammar and the chain then both take the token.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any


class GrammarSampler:
    """A sampler (``sample(ctx, idx)``) over a chain without a grammar plus ``grammar`` (a
    llama_cpp.LlamaGrammar), checked on the chain's pick first; the grammar starts past the
    ``resumed`` tokens (a generation continued from them)."""

    def __init__(self, llm: Any, chain: Any, grammar: Any,
                 resumed: tuple[int, ...] = ()) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._chain = chain
        self.n_vocab = int(llm.n_vocab())
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self._grammar:
            raise ValueError("llama.cpp could not compile the grammar")
        for token in resumed:
            llama_cpp.llama_sampler_accept(self._grammar, token)
        self._all = _internals.LlamaTokenDataArray(n_vocab=self.n_vocab)
        self._one_data = (llama_cpp.llama_token_data * 1)()
        self._one = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one_data, llama_cpp.llama_token_data_p), size=1,
            selected=-1, sorted=False)

    def _pick(self, logits: Any, constrained: bool) -> int:
        import llama_cpp

        cur = self._all
        cur.copy_logits(logits)
        cur.candidates.selected = -1
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur.candidates))
        llama_cpp.llama_sampler_apply(self._chain.sampler, ctypes.byref(cur.candidates))
        return int(cur.candidates.data[cur.candidates.selected].id)

    def allows(self, token: int) -> bool:
        import llama_cpp

        self._one_data[0] = llama_cpp.llama_token_data(token, 0.0, 0.0)
        self._one.size = 1
        self._one.selected = -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one))
        return not math.isinf(self._one_data[0].logit)

    def sample(self, ctx: Any, idx: int) -> int:
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(ctx.ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token = self._pick(logits, constrained=False)
        if not self.allows(token):
            token = self._pick(logits, constrained=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        return token

    def close(self) -> None:
        import llama_cpp

        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()

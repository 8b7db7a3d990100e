"""The plain streamed completion through a replica, before and after the API's features:
tokens/s of the working tree's replica against the committed tree's (git HEAD, unpacked to a
temporary folder), both real ``surefoot serve`` processes on the same GGUF and threads, their
rounds interleaved, one decoding at a time; medians and their ratio (target >= 0.97). The
token-by-token path (logprobs) of the working tree is measured too, for reference.

    .venv/bin/python bench/api_path.py [--rounds 5] [--max-tokens 64] [--base REV]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper and a storm."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unpack(rev: str) -> Path:
    """The tree at ``rev`` in a temporary folder (git archive: the repository is untouched)."""
    out = Path(tempfile.mkdtemp(prefix="api-path-base-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def start(tree: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--embedding-model", "", "--n-ctx", "512", "--max-tokens", "256",
           "--n-threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the replica of {tree} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the replica of {tree} was not ready in 120 s")


def streamed(url: str, max_tokens: int, **extra: Any) -> float:
    """Tokens/s of one streamed completion, request to ``[DONE]``."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    tokens = 0
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--base", default="HEAD", help="the revision measured as the baseline")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    base_tree = unpack(args.base)
    procs = {}
    try:
        procs["base"] = start(base_tree, args.threads)
        procs["new"] = start(REPO, args.threads)
        for name, (_, url) in procs.items():  # warm: first decode, page-in of the weights
            streamed(url, 8)
            route = httpx.get(f"{url}/v1/models/gemma-3-270m", timeout=30).status_code
            print(f"  {name}: GET /v1/models/{{model}} answers {route} (tells the trees apart)")
        runs: dict[str, list[float]] = {"base": [], "new": [], "new+logprobs": []}
        for r in range(args.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            for name in order:
                runs[name].append(streamed(procs[name][1], args.max_tokens))
            runs["new+logprobs"].append(streamed(procs["new"][1], args.max_tokens, logprobs=5))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(30)
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: max(v) for k, v in runs.items()}
    print(f"plain streamed completion, {args.max_tokens} tokens, {args.rounds} rounds, "
          f"{args.threads} threads")
    for name, values in runs.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"  {name:13s} median {med[name]:6.1f} tokens/s  (range {spread})")
    print(f"  ratio new/base {med['new'] / med['base']:.3f}  (target >= 0.97); of the best "
          f"rounds {best['new'] / best['base']:.3f} (less hurt by other load on the machine)")
    print(f"  logprobs=5 / plain {med['new+logprobs'] / med['new']:.3f}")


if __name__ == "__main__":
    main()

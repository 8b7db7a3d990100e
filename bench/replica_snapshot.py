"""A replica's latency while checkpoints are taken, against the same replica without them.

    .venv/bin/python bench/replica_snapshot.py [--rounds 6] [--requests 40]

One `surefoot serve` with a checkpoint store; rounds alternate between plain load and load
with snapshots running back to back (`POST /admin/snapshot`), and print the p99 of each and
their ratio (target: p99 with snapshots <= 1.1x without).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()

    port = free_port()
    ckpt = tempfile.mkdtemp(prefix="surefoot-bench-ckpt-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "serve", "--host",
         "127.0.0.1", "--port", str(port), "--embedding-model", "", "--checkpoint-dir", ckpt,
         "--checkpoint-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=60)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("replica did not start")
            time.sleep(0.1)
        client.post(f"{url}/admin/snapshot")  # first snapshot stores the model file once

        def load() -> list[float]:
            out = []
            for i in range(args.requests):
                start = time.perf_counter()
                r = client.post(f"{url}/v1/completions", json={
                    "prompt": f"Item {i}: the weather today is", "max_tokens": args.max_tokens,
                    "temperature": 0})
                r.raise_for_status()
                out.append(time.perf_counter() - start)
            return out

        plain: list[float] = []
        during: list[float] = []
        snaps: list[float] = []
        for r in range(args.rounds):
            if r % 2 == 0:
                plain += load()
                continue
            stop = threading.Event()
            snap_client = httpx.Client(timeout=60)

            def snapshots(stop: threading.Event, http: httpx.Client) -> None:
                while not stop.is_set():
                    resp = http.post(f"{url}/admin/snapshot")
                    if resp.status_code == 201:
                        snaps.append(resp.json()["seconds"])

            t = threading.Thread(target=snapshots, args=(stop, snap_client))
            t.start()
            during += load()
            stop.set()
            t.join()
            snap_client.close()
        print(f"replica latency, {len(plain)} requests per side, max_tokens={args.max_tokens}")
        print(f"without snapshots: p50 {statistics.median(plain) * 1000:.1f} ms, "
              f"p99 {p99(plain) * 1000:.1f} ms")
        print(f"with snapshots:    p50 {statistics.median(during) * 1000:.1f} ms, "
              f"p99 {p99(during) * 1000:.1f} ms  ({len(snaps)} snapshots, median "
              f"{statistics.median(snaps) * 1000:.1f} ms each)")
        print(f"ratio p99 with/without: {p99(during) / p99(plain):.3f}  (target <= 1.1)")
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

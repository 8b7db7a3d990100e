"""Failover time: from the loss of the last ready replica of the serving revision to traffic
flowing to another revision that has ready replicas.

Target (issue "Faults that pile up"): p99 <= 100 ms.

Method: real processes. Replicas are stub upstreams (tests/knative/stub_upstream.py, each its
own process, answering after ``--delay-ms`` like a model's service time); the gateway is
``surefoot gateway`` (its own process, breakers on an embedded Redis) with a static table.
``--clients`` closed-loop keep-alive clients send completions; after ``--warmup`` seconds every
replica of the serving revision is killed with SIGKILL (the routing table still says they are
ready: the platform has not noticed yet), and the load goes on for ``--hold`` seconds. The gap
of one trial is the time from the kill to the first answer (200) from the other revision; the
failed requests after the kill are counted. Each trial starts fresh replicas and a fresh
gateway.

Two directions:
- ``primary->fallback``: traffic primary=100, fallback tagged; the primary's replicas die;
- ``fallback->primary``: traffic fallback=100, the primary a target at 0%; the fallback's
  replica dies (before this issue the gateway never went back to the primary).

Baselines in the same run: the latency of the requests before the kill (a healthy gateway),
and with ``--old-tree DIR`` (a checkout of another version of the project, e.g.
``git archive <commit> | tar -x -C DIR``) the same trials against that version's gateway.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import ROOT, Conn, free_port, request_bytes, start_stub, stop, wait_ready


@dataclass
class Trial:
    gap: float | None  # seconds from the kill to the first answer from the other revision
    failed: int  # requests answered other than 200 (or broken) after the kill
    after: int  # requests finished after the kill
    healthy: list[float] = field(default_factory=list)  # latencies before the kill


def start_gateway(tree: Path, port: int, targets: list[str],
                  fallback: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "gateway",
            "--port", str(port), "--workers", "1", "--fallback", fallback,
            "--try-timeout", "5", "--deadline", "10"]
    for t in targets:
        argv += ["--target", t]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def load(port: int, clients: int, stop_at: list[float],
         out: list[tuple[float, float, int, str]]) -> list[threading.Thread]:
    """Closed-loop clients appending (start, end, status, revision) until ``stop_at[0]``."""
    req = request_bytes("127.0.0.1", port)
    lock = threading.Lock()

    def worker() -> None:
        c = Conn("127.0.0.1", port, req)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            try:
                status, headers = c.call()
                rev = headers.get("x-surefoot-revision", "")
            except (OSError, ValueError):
                status, rev = 0, ""
                c.close()
                c = Conn("127.0.0.1", port, req)
            with lock:
                out.append((t0, time.perf_counter(), status, rev))
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def trial(args: argparse.Namespace, tree: Path, direction: str) -> Trial:
    ports = {n: free_port() for n in ("p1", "p2", "f1")}
    procs = {n: start_stub(port, args.delay_ms, n) for n, port in ports.items()}
    urls = {n: f"http://127.0.0.1:{port}" for n, port in ports.items()}
    primary = f"{urls['p1']},{urls['p2']}"
    victims: tuple[str, ...]
    if direction == "primary->fallback":
        targets, victims, other = [f"primary=100={primary}"], ("p1", "p2"), "fallback"
    else:
        targets = [f"fallback=100={urls['f1']}", f"primary=0={primary}"]
        victims, other = ("f1",), "primary"
    gw_port = free_port()
    gw = start_gateway(tree, gw_port, targets, f"fallback={urls['f1']}")
    try:
        rows: list[tuple[float, float, int, str]] = []
        stop_at = [time.perf_counter() + args.warmup + args.hold]
        threads = load(gw_port, args.clients, stop_at, rows)
        time.sleep(args.warmup)
        t_kill = time.perf_counter()
        for n in victims:
            os.kill(procs[n].pid, signal.SIGKILL)
        for t in threads:
            t.join()
        after = [r for r in rows if r[1] > t_kill]
        ok_other = [r[1] for r in after if r[2] == 200 and r[3] == other]
        return Trial(
            gap=min(ok_other) - t_kill if ok_other else None,
            failed=sum(1 for r in after if r[2] != 200),
            after=len(after),
            healthy=[r[1] - r[0] for r in rows if r[1] <= t_kill and r[2] == 200],
        )
    finally:
        stop(gw)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(5)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def report(label: str, trials: list[Trial]) -> tuple[float, float]:
    gaps = [t.gap for t in trials if t.gap is not None]
    never = len(trials) - len(gaps)
    failed = sum(t.failed for t in trials)
    after = sum(t.after for t in trials)
    p50, p99 = pct(gaps, 0.5) * 1000, pct(gaps, 0.99) * 1000
    print(f"  {label:<26} gap p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
          f"(trials {len(trials)}, never flowed {never}; failed {failed} of {after} requests "
          f"after the kill)")
    return p50, p99


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=5, help="trials per direction (default 5)")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients (default 4)")
    ap.add_argument("--delay-ms", type=float, default=10.0,
                    help="each replica's service time (default 10)")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds of load before the kill")
    ap.add_argument("--hold", type=float, default=0.7, help="seconds of load after the kill")
    ap.add_argument("--old-tree", type=Path, default=None,
                    help="a checkout of another version: the same trials against its gateway")
    ap.add_argument("--direction", choices=("both", "primary->fallback", "fallback->primary"),
                    default="both")
    return ap.parse_args()


def main() -> int:
    args = _args()
    if args.trials < 1 or args.clients < 1:
        print("failover: --trials and --clients must be at least 1", file=sys.stderr)
        return 2
    if args.old_tree is not None and not (args.old_tree / "surefoot").is_dir():
        print(f"failover: --old-tree {args.old_tree} holds no surefoot package", file=sys.stderr)
        return 2
    directions = (["primary->fallback", "fallback->primary"] if args.direction == "both"
                  else [args.direction])
    trees = [("this tree", ROOT)] + ([("old tree", args.old_tree)] if args.old_tree else [])
    worst = 0.0
    print(f"failover: {args.trials} trials per direction, {args.clients} clients, replicas "
          f"answer after {args.delay_ms:g} ms, SIGKILL after {args.warmup:g} s")
    for direction in directions:
        print(direction)
        for name, tree in trees:
            trials = [trial(args, tree, direction) for _ in range(args.trials)]
            healthy = [x for t in trials for x in t.healthy]
            _, p99 = report(name, trials)
            if tree == ROOT:
                worst = max(worst, p99)
                h50, h99 = pct(healthy, 0.5) * 1000, pct(healthy, 0.99) * 1000
                print(f"  {'healthy request latency':<26} p50 {h50:7.1f} ms  p99 {h99:7.1f} ms"
                      f"  (gap p99 / healthy p99 = {p99 / h99:.2f}x)")
    verdict = "meets" if worst <= 100 else "MISSES"
    print(f"failover gap p99 (worst direction) {worst:.1f} ms: {verdict} the <= 100 ms target")
    return 0 if worst <= 100 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Gateway overhead: added latency and throughput against direct calls to the same upstream.

Targets (issue "Shared circuit breakers in Redis, and the inference gateway"):
  p50 added latency <= 1 ms over direct calls; throughput >= 0.95x direct.

Method: one upstream, one gateway process (`surefoot gateway`, breakers on, embedded Redis)
in front of it, and a lean keep-alive load client. Rounds alternate direct / through the gateway
(interleaved, so drift on a shared machine hits both alike); each figure is the median over the
rounds of the per-round value.

- latency: 1 client, the upstream answering at once; added = p50(gateway) - p50(direct).
- throughput: N concurrent clients, the upstream holding each answer ``--delay-ms`` (a model's
  service time; the stub honours x-stub-delay-ms); ratio = req/s(gateway) / req/s(direct).
- saturation (reported, no target): N clients, the upstream answering at once. Both sides are
  then CPU-bound on the same cores, so this shows the gateway's CPU cost per request rather
  than what a client of a model server would see.

By default the upstream is the stub (tests/knative/stub_upstream.py) in its own process;
``--upstream URL`` measures against a real replica instead (e.g. ``surefoot serve``), with
``--path`` and ``--body`` for its request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import (
    BODY,
    RoundResult,
    free_port,
    median,
    request_bytes,
    run_round,
    start_gateway,
    start_stub,
    stop,
)


class _Sides:
    """The two sides measured, and the request bytes each is sent."""

    def __init__(self, args: argparse.Namespace, up_host: str, up_port: int,
                 gw_port: int) -> None:
        self.args = args
        self.up = (up_host, up_port)
        self.gw = ("127.0.0.1", gw_port)
        self.body = args.body.encode() if args.body else BODY

    def req(self, side: tuple[str, int], delay: bool) -> bytes:
        a = self.args
        extra = f"x-stub-delay-ms: {a.delay_ms}\r\n" if delay and not a.upstream else ""
        return request_bytes(side[0], side[1], a.path, self.body, extra)

    def round(self, side: tuple[str, int], clients: int, delay: bool,
              seconds: float | None = None) -> RoundResult:
        return run_round(side[0], side[1], clients,
                         self.args.seconds if seconds is None else seconds,
                         self.req(side, delay))


def _latency(sides: _Sides) -> int:
    """Added p50 latency with one client; returns the errors seen."""
    d50, g50, added, d99, g99 = [], [], [], [], []
    errors = 0
    for _ in range(sides.args.rounds):
        d = sides.round(sides.up, 1, False)
        g = sides.round(sides.gw, 1, False)
        errors += d.errors + g.errors
        d50.append(d.pct(0.5))
        g50.append(g.pct(0.5))
        d99.append(d.pct(0.99))
        g99.append(g.pct(0.99))
        added.append(g.pct(0.5) - d.pct(0.5))
    lat_added = median(added)
    print("\nlatency, 1 client (median of rounds):")
    print(f"  direct  p50 {median(d50) * 1e3:7.3f} ms   p99 {median(d99) * 1e3:7.3f} ms")
    print(f"  gateway p50 {median(g50) * 1e3:7.3f} ms   p99 {median(g99) * 1e3:7.3f} ms")
    print(f"  added p50 {lat_added * 1e3:.3f} ms   (target <= 1 ms: "
          f"{'PASS' if lat_added <= 1e-3 else 'FAIL'})")
    return errors


def _throughput(sides: _Sides) -> int:
    """Throughput ratio with N clients and a service time; returns the errors seen."""
    args = sides.args
    c = args.concurrency
    ratios, drps, grps = [], [], []
    errors = 0
    for _ in range(args.rounds):
        d = sides.round(sides.up, c, True)
        g = sides.round(sides.gw, c, True)
        errors += d.errors + g.errors
        drps.append(d.rps)
        grps.append(g.rps)
        ratios.append(g.rps / d.rps)
    ratio = median(ratios)
    what = "real upstream" if args.upstream else f"upstream service time {args.delay_ms} ms"
    print(f"\nthroughput, {c} clients, {what} (median of rounds):")
    print(f"  direct  {median(drps):8.1f} req/s")
    print(f"  gateway {median(grps):8.1f} req/s")
    print(f"  ratio {ratio:.3f}   (target >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'})")
    return errors


def _saturation(sides: _Sides) -> int:
    """N clients, the upstream answering at once (reported, no target); returns the errors."""
    c = sides.args.concurrency
    sr, sd, sg, sg50 = [], [], [], []
    errors = 0
    for _ in range(max(2, sides.args.rounds // 2)):
        d = sides.round(sides.up, c, False)
        g = sides.round(sides.gw, c, False)
        errors += d.errors + g.errors
        sd.append(d.rps)
        sg.append(g.rps)
        sg50.append(g.pct(0.5))
        sr.append(g.rps / d.rps)
    print(f"\nsaturation, {c} clients, upstream answering at once (CPU-bound, no target):")
    print(f"  direct {median(sd):8.1f} req/s   gateway {median(sg):8.1f} req/s   "
          f"ratio {median(sr):.3f}   gateway p50 {median(sg50) * 1e3:.2f} ms")
    return errors


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", help="a real replica URL instead of the stub")
    ap.add_argument("--path", default="/v1/completions")
    ap.add_argument("--body", help="request JSON (default: a 4-token completion)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per side and phase")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of one round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--delay-ms", type=float, default=20.0,
                    help="the stub's service time in the throughput phase")
    ap.add_argument("--workers", type=int, default=1, help="gateway processes")
    ap.add_argument("--skip-saturation", action="store_true")
    args = ap.parse_args()
    if args.body:
        json.loads(args.body)  # fail early on bad JSON
    return args


def main() -> int:
    args = _args()
    procs = []
    try:
        if args.upstream:
            u = urlsplit(args.upstream)
            up_host, up_port = u.hostname or "127.0.0.1", u.port or 80
        else:
            up_host, up_port = "127.0.0.1", free_port()
            procs.append(start_stub(up_port))
        gw_port = free_port()
        procs.append(start_gateway(gw_port, [f"primary=100=http://{up_host}:{up_port}"],
                                   workers=args.workers))
        print(f"upstream http://{up_host}:{up_port}  gateway http://127.0.0.1:{gw_port} "
              f"({args.workers} worker(s))  rounds={args.rounds} x {args.seconds}s")
        sides = _Sides(args, up_host, up_port, gw_port)
        # Warm both paths (connections, pools, code).
        sides.round(sides.up, 2, False, 0.3)
        sides.round(sides.gw, 2, False, 0.3)
        errors = _latency(sides) + _throughput(sides)
        if not args.skip_saturation and not args.upstream:
            errors += _saturation(sides)
        print(f"\nerrors: {errors}")
        return 0 if errors == 0 else 1
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the events path: fault detection -> subscriber, and the sender's rate.

1. Detection latency: a scripted probe reports an XID; the GPU health source detects it,
   builds the event and publishes it; the local broker (real HTTP) matches a trigger and
   delivers it to a subscriber (real HTTP). Measured from the probe reporting the XID to the
   subscriber's handler holding the event. Target: p99 <= 10 ms. Baseline: one raw httpx POST
   round trip to the same subscriber.
2. Sender throughput: ``Sender.send`` in binary mode, one thread, keep-alive pool, to a minimal
   HTTP/1.1 receiver in another process. Target: >= 2,000 events/s. Baseline: raw httpx POSTs of
   the same pre-encoded message through the same kind of client.

Rounds are interleaved; medians are printed. Run: .venv/bin/python bench/events.py [--quick]
"""

from __future__ import annotations

import os
import sys

# This file is named events.py: keep its folder off sys.path so "import events" finds the
# package, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

import events as ev  # noqa: E402

LATENCY_TARGET_MS = 10.0
RATE_TARGET = 2000.0
RAW_SOURCE = "/bench/raw"
CPU_US: dict[str, list[float]] = {"sender": [], "raw": []}  # CPU time of this process per send

RECEIVER = r"""
import asyncio, re, sys
CL = re.compile(rb"content-length:\s*(\d+)", re.I)
REPLY = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = CL.search(head)
            if m:
                await reader.readexactly(int(m.group(1)))
            writer.write(REPLY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Subscriber:
    """A real HTTP subscriber that notes when each event arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()

        def handler(event: ev.Event) -> None:
            now = time.perf_counter()
            if event.source == RAW_SOURCE:
                return None  # the baseline's POSTs are not faults
            with self.cond:
                self.arrived[len(self.arrived)] = now
                self.cond.notify_all()
            return None

        self.server = ev.HttpServer(ev.create_app(ev.ReceiverSettings(), handler)).start()
        self.url = self.server.url + "/"

    def wait(self, n: int, timeout: float = 5.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrived) >= n, timeout=timeout):
                raise RuntimeError(f"event {n} never arrived")
            return self.arrived[n - 1]


def detection_round(samples: int) -> tuple[list[float], list[float]]:
    """(detection->delivery ms, raw POST round trip ms) for ``samples`` faults."""
    sub = Subscriber()
    broker = ev.BrokerServer(ev.BrokerSettings(workers=4), triggers=[
        ev.Trigger("gpu", sub.url, filters=({"prefix": {"type": "dev.surefoot.gpu."}},))]).start()
    probe = ev.FakeProbe(gpus=1)
    settings = ev.GpuSourceSettings(node="bench-node", poll_interval_s=3600, event_wait_ms=1000,
                                    dedupe_window_s=0, rate_limit_s=0, escalate_after=10**9)
    sender = ev.Sender()
    publisher = ev.Publisher(sender, broker.url + "/")
    source = ev.GpuHealthSource(settings, probe, publisher)
    stop = threading.Event()
    runner = threading.Thread(target=source.run, args=(stop,), daemon=True)
    runner.start()
    latencies: list[float] = []
    raw: list[float] = []
    message = ev.to_binary(dataclasses.replace(ev.xid_event(settings, None, 79),
                                               source=RAW_SOURCE))
    try:
        with httpx.Client() as client:
            for i in range(samples + 10):
                t0 = time.perf_counter()
                probe.push_xid(0, 79)
                arrived = sub.wait(i + 1)
                if i >= 10:  # warm-up: connections, first-call imports
                    latencies.append((arrived - t0) * 1000)
                t1 = time.perf_counter()
                client.post(sub.url, content=message.body, headers=message.headers)
                if i >= 10:
                    raw.append((time.perf_counter() - t1) * 1000)
    finally:
        stop.set()
        probe.close()
        runner.join(5)
        publisher.close()
        sender.close()
        broker.stop()
        sub.server.stop()
    return latencies, raw


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/"


def sender_rate(url: str, n: int) -> float:
    event = ev.xid_event(ev.GpuSourceSettings(node="bench-node"), None, 79)
    with ev.Sender(ev.SenderSettings(max_connections=4)) as sender:
        for _ in range(50):
            sender.send(event, url)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            if not sender.send(event, url).ok:
                raise RuntimeError("send failed")
        CPU_US["sender"].append((time.process_time() - c0) / n * 1e6)
        return n / (time.perf_counter() - t0)


def raw_rate(url: str, n: int) -> float:
    msg = ev.to_binary(ev.xid_event(ev.GpuSourceSettings(node="bench-node"), None, 79))
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    with httpx.Client(limits=limits) as client:
        for _ in range(50):
            client.post(url, content=msg.body, headers=msg.headers)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            client.post(url, content=msg.body, headers=msg.headers).raise_for_status()
        CPU_US["raw"].append((time.process_time() - c0) / n * 1e6)
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="faults per latency round")
    parser.add_argument("--events", type=int, default=3000, help="events per rate round")
    parser.add_argument("--quick", action="store_true", help="small run (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.samples, args.events = 2, 60, 500

    import logging

    logging.basicConfig(level=logging.WARNING)
    print(f"events benchmark: {args.rounds} interleaved rounds, {os.cpu_count()} CPUs")
    proc, url = start_receiver()
    lat_all: list[float] = []
    raw_all: list[float] = []
    lat_p99: list[float] = []
    rates: list[float] = []
    raws: list[float] = []
    try:
        for r in range(args.rounds):
            lat, raw = detection_round(args.samples)
            lat_all += lat
            raw_all += raw
            lat_p99.append(pct(lat, 99))
            if r % 2 == 0:
                raws.append(raw_rate(url, args.events))
                rates.append(sender_rate(url, args.events))
            else:
                rates.append(sender_rate(url, args.events))
                raws.append(raw_rate(url, args.events))
            print(f"  round {r + 1}: detection p50 {pct(lat, 50):.2f} ms p99 {pct(lat, 99):.2f} ms"
                  f" | sender {rates[-1]:.0f}/s raw httpx {raws[-1]:.0f}/s")
    finally:
        proc.terminate()
        proc.wait(5)

    p50, p90, p99 = (pct(lat_all, q) for q in (50, 90, 99))
    raw50, raw99 = pct(raw_all, 50), pct(raw_all, 99)
    rate, raw_r = statistics.median(rates), statistics.median(raws)
    print()
    print("detection -> delivered via broker (fake probe XID -> source -> broker -> subscriber)")
    print(f"  samples {len(lat_all)}: p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms  "
          f"max {max(lat_all):.2f} ms  (median of round p99s {statistics.median(lat_p99):.2f} ms)")
    print(f"  target p99 <= {LATENCY_TARGET_MS:.0f} ms: p99/target = {p99 / LATENCY_TARGET_MS:.2f}"
          f" -> {'MET' if p99 <= LATENCY_TARGET_MS else 'MISSED'}")
    print(f"  baseline, one raw httpx POST to the subscriber: p50 {raw50:.2f} ms p99 {raw99:.2f} ms"
          f"; detection p50 / raw p50 = {p50 / raw50:.1f}x")
    print("sender throughput (binary mode, 1 thread, keep-alive) to a minimal HTTP receiver")
    print(f"  sender {rate:.0f} events/s (median)  raw httpx {raw_r:.0f} requests/s (median)")
    print(f"  sender / target = {rate / RATE_TARGET:.2f} -> "
          f"{'MET' if rate >= RATE_TARGET else 'MISSED'}; sender / raw httpx = {rate / raw_r:.2f}")
    cpu_s, cpu_r = statistics.median(CPU_US["sender"]), statistics.median(CPU_US["raw"])
    print(f"  CPU per event in the sending process (independent of other load): sender "
          f"{cpu_s:.0f} us (= {1e6 / cpu_s:.0f}/s per core), raw httpx {cpu_r:.0f} us "
          f"(= {1e6 / cpu_r:.0f}/s per core)")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0




if __name__ == "__main__":
    sys.exit(main())

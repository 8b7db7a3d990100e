"""Streams that survive SIGKILL and SIGSTOP of their replica (issue "Streams survive abrupt
faults").

Targets: 0 broken streams of 8 concurrent when a replica is SIGKILLed or SIGSTOPped; resume
pause after SIGKILL p99 <= 1.5x the time to first token of the same replica set; stall detected
and resumed after SIGSTOP p99 <= 2 s; streams without a fault: tokens/s through the gateway with
resume >= 0.97x the gateway without it.

Method: three `surefoot serve` replicas (two primaries, one fallback), each in its own process
group with one thread, and two gateways in this process in front of them: one with the internal
token (resumable streams), one without (plain pass-through, the baseline). Each fault round
starts 8 greedy streams (a chat that counts, so the text does not hinge on near ties), waits
until every stream has a few chunks, then SIGKILLs (or SIGSTOPs) the replica holding stream 0;
a killed replica is restarted before the next round, a stopped one continued. A stream is broken
without ``[DONE]`` or with an error event; identical when its text is the reference (the same
request, uninterrupted). The pause is, for a stream on the victim, the longest gap between two
of its chunks seen by the client. TTFT: the first content chunk of a stream alone. Steady
state: rounds alternate the two gateways, 8 streams each, tokens/s = completion tokens / wall
time; the ratio is the median over the rounds.

Plain rounds do the same with 8 non-streamed chats (the gateway reads them as internal streams
and assembles the answer): the victim is the replica with the most of the gateway's tries once
the gateway has passed on a few tokens of every request on average; identical when the
answer's text is the reference's. First-event rounds freeze (SIGSTOP) a primary before 8
streams start: those sent to it must go elsewhere after the first-event timeout; their time to
the first content chunk is reported. For every resume the gateway's own pause (last event
before the break to the first after it) is recorded too.

    .venv/bin/python bench/resume.py --rounds 2 --steady-rounds 3
    .venv/bin/python bench/resume.py --rounds 1 --plain-rounds 1 --first-event-rounds 1 \
        --steady-rounds 0
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import itertools

import httpx

from knative.gateway import GatewaySettings, _resume
from tests.knative.test_resume_gateway import CHAT, Gateway, Replica, content

N_STREAMS = 8


class Timed:
    """One client stream: its chunks and when each came."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.times: list[float] = []
        self.replica = ""
        self.error = ""

    @property
    def broken(self) -> bool:
        return not self.chunks or self.chunks[-1] != "[DONE]" or any(
            isinstance(c, dict) and "error" in c for c in self.chunks)

    def max_gap(self) -> float:
        t = self.times
        return max((b - a for a, b in itertools.pairwise(t)), default=0.0)


def run_stream(url: str, body: dict[str, Any], out: Timed) -> None:
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=180,
                          json={**body, "stream": True,
                                "stream_options": {"include_usage": True}}) as r:
            out.replica = r.headers.get("x-surefoot-replica", "")
            if r.status_code != 200:
                out.error = f"{r.status_code} {r.read()[:300]!r}"
                return
            buf = ""
            for piece in r.iter_text():
                buf += piece
                while "\n\n" in buf:
                    ev, buf = buf.split("\n\n", 1)
                    data = ev[len("data: "):]
                    out.chunks.append("[DONE]" if data == "[DONE]" else json.loads(data))
                    out.times.append(time.monotonic())
    except (httpx.HTTPError, ValueError) as exc:
        out.error = str(exc)


def start(url: str, body: dict[str, Any]) -> tuple[list[Timed], list[threading.Thread]]:
    outs = [Timed() for _ in range(N_STREAMS)]
    threads = [threading.Thread(target=run_stream, args=(url, body, o)) for o in outs]
    for t in threads:
        t.start()
    return outs, threads


def ttft(url: str, body: dict[str, Any], n: int) -> float:
    vals = []
    for _ in range(n):
        o = Timed()
        t0 = time.monotonic()
        run_stream(url, body, o)
        firsts = [t for c, t in zip(o.chunks, o.times, strict=False) if isinstance(c, dict)
                  and c.get("choices") and c["choices"][0]["delta"].get("content")]
        vals.append(firsts[0] - t0)
    return statistics.median(vals)


def fault_round(reps: dict[str, Replica], gw: Gateway, body: dict[str, Any], ref: str,
                sig: int) -> dict[str, Any]:
    outs, threads = start(gw.url, body)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sorted(len(o.chunks) for o in outs)[N_STREAMS // 2] < 4:
        time.sleep(0.01)
    live = [o.replica for o in outs if o.replica and (not o.chunks or o.chunks[-1] != "[DONE]")]
    victim = max(set(live), key=live.count) if live else outs[0].replica
    before = gateway_pause(gw)
    hit = [o for o in outs if o.replica == victim and (not o.chunks or o.chunks[-1] != "[DONE]")]
    t_fault = time.monotonic()
    reps[victim].signal(sig)
    for t in threads:
        t.join(180)
    after = gateway_pause(gw)
    on_victim = [o for o in outs if o.replica == victim]
    res = {
        "victim": victim, "on_victim": len(on_victim),
        "broken": sum(o.broken for o in outs),
        "identical": sum(content(o.chunks[:-1]) == ref for o in outs if not o.broken),
        "resumed": len(hit),
        "resumed_identical": sum(content(o.chunks[:-1]) == ref for o in hit if not o.broken),
        "pauses": [o.max_gap() for o in on_victim],
        # fault -> the first chunk after it, for the streams live on the victim at the fault
        "after_fault": [next((t - t_fault for t in o.times if t > t_fault), float("nan"))
                        for o in hit],
        "errors": [o.error or (o.chunks[-1] if o.chunks else "no chunk") for o in outs
                   if o.broken],
        "resumes": after[1] - before[1],
        "gateway_pause_mean": (after[0] - before[0]) / max(1.0, after[1] - before[1]),
    }
    recover(reps, victim, sig)
    return res


def recover(reps: dict[str, Replica], victim: str, sig: int) -> None:
    """Continue a stopped replica; restart a killed one on its address."""
    if sig == signal.SIGSTOP:
        reps[victim].signal(signal.SIGCONT)
    else:
        reps[victim].proc.wait(10)
        reps[victim] = Replica(victim, reps[victim].port)  # the routing table's address
        reps[victim].wait_ready(time.monotonic() + 180)


class Tokens:
    """Token ids the gateway has passed on, all requests together (a spy on its tracker)."""

    def __init__(self) -> None:
        self.n = 0
        take = _resume.Tracker.take
        me = self

        def spy(tracker: _resume.Tracker, events: bytes) -> bytes:
            before = len(tracker.ids)
            out = take(tracker, events)
            me.n += len(tracker.ids) - before
            return out

        _resume.Tracker.take = spy  # type: ignore[method-assign]


def plain_round(reps: dict[str, Replica], gw: Gateway, body: dict[str, Any], ref: str,
                sig: int, tokens: Tokens) -> dict[str, Any]:
    """8 non-streamed chats; the replica with the most of them is killed or frozen mid-way."""
    answers: list[tuple[str, int, str]] = [("", 0, "")] * N_STREAMS

    def one(i: int) -> None:
        try:
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=180)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
            answers[i] = (r.headers.get("x-surefoot-replica", ""), r.status_code, text)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            answers[i] = ("", 0, str(exc))

    base = tokens.n
    threads = [threading.Thread(target=one, args=(i,)) for i in range(N_STREAMS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tokens.n - base < 4 * N_STREAMS:
        time.sleep(0.01)
    busy = {n: gw.gw.inflight.tries(r.url) for n, r in reps.items()}
    victim = max(busy, key=lambda n: busy[n])
    reps[victim].signal(sig)
    for t in threads:
        t.join(180)
    recover(reps, victim, sig)
    hit = [a for a in answers if a[0] == victim]
    return {"victim": victim, "tries_on_victim": busy[victim],
            "failed": sum(a[1] != 200 for a in answers),
            "identical": sum(a[2] == ref for a in answers if a[1] == 200),
            "resumed": len(hit), "resumed_identical": sum(a[2] == ref for a in hit)}


def first_event_round(reps: dict[str, Replica], gw: Gateway, body: dict[str, Any],
                      ref: str) -> dict[str, Any]:
    """A primary frozen before 8 streams start; each must still come, from another."""
    before = gw.gw.metrics.resumes("first_event")
    reps["r1"].signal(signal.SIGSTOP)
    t0 = time.monotonic()
    outs, threads = start(gw.url, body)
    for t in threads:
        t.join(180)
    reps["r1"].signal(signal.SIGCONT)
    firsts = [first_content(o) - t0 for o in outs if not o.broken]
    return {"broken": sum(o.broken for o in outs),
            "identical": sum(content(o.chunks[:-1]) == ref for o in outs if not o.broken),
            "first_event_resumes": gw.gw.metrics.resumes("first_event") - before,
            "first_content_p50": statistics.median(firsts) if firsts else float("nan"),
            "first_content_max": max(firsts, default=float("nan"))}


def spy_pauses(gw: Gateway) -> list[float]:
    """Every resume pause the gateway records, as it records it."""
    pauses: list[float] = []
    m = gw.gw.metrics
    observe = m.observe_resume_pause

    def spy(seconds: float) -> None:
        pauses.append(seconds)
        observe(seconds)

    m.observe_resume_pause = spy  # type: ignore[method-assign]
    return pauses


def first_content(o: Timed) -> float:
    return next(t for c, t in zip(o.chunks, o.times, strict=False) if isinstance(c, dict)
                and c.get("choices") and c["choices"][0]["delta"].get("content"))


def steady(gw: Gateway, body: dict[str, Any]) -> tuple[float, list[float]]:
    """Tokens/s of 8 streams without a fault, and each stream's TTFT under that load."""
    t0 = time.monotonic()
    outs, threads = start(gw.url, body)
    for t in threads:
        t.join(180)
    tokens = sum(o.chunks[-2]["usage"]["completion_tokens"] for o in outs if not o.broken)
    return tokens / (time.monotonic() - t0), [first_content(o) - t0 for o in outs]


def gateway_pause(gw: Gateway) -> tuple[float, float]:
    """The gateway's resume pause histogram: (sum of seconds, count)."""
    reg = gw.gw.metrics.registry
    name = "surefoot_gateway_resume_pause_seconds"
    return (reg.get_sample_value(f"{name}_sum") or 0.0,
            reg.get_sample_value(f"{name}_count") or 0.0)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="fault rounds per signal")
    ap.add_argument("--steady-rounds", type=int, default=3)
    ap.add_argument("--plain-rounds", type=int, default=1,
                    help="fault rounds per signal with non-streamed chats")
    ap.add_argument("--first-event-rounds", type=int, default=1,
                    help="rounds with a primary frozen before the streams start")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--try-timeout", type=float, default=60.0,
                    help="the gateway's try timeout (a stream queued on a busy replica waits "
                    "that long for its first event)")
    ap.add_argument("--stall-gap-factor", type=float, default=GatewaySettings.stall_gap_factor,
                    help="a stream is stalled after this many times its replica's usual gap")
    a = ap.parse_args()
    body = {**CHAT, "max_tokens": a.max_tokens}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the replicas are stopped below
    reps = {n: Replica(n) for n in ("r1", "r2", "r3")}
    try:
        d = time.monotonic() + 240
        for r in reps.values():
            r.wait_ready(d)
        tokens = Tokens()
        limits = {"try_timeout": a.try_timeout, "deadline": max(120.0, 2 * a.try_timeout),
                  "stall_gap_factor": a.stall_gap_factor,
                  # the product's bounds, not the tests' tighter ones
                  "stall_timeout_min": GatewaySettings.stall_timeout_min,
                  "stall_timeout_max": GatewaySettings.stall_timeout_max}
        gw = Gateway(reps, None, **limits)
        pauses = spy_pauses(gw)
        plain = Gateway(reps, None, internal_token=None, **limits)  # plain pass-through
        ref_o = Timed()
        run_stream(gw.url, body, ref_o)
        ref = content(ref_o.chunks[:-1])
        t_first = ttft(gw.url, body, 5)
        print(f"reference: {len(ref)} chars; TTFT median {t_first * 1000:.0f} ms")
        results: dict[str, list[dict[str, Any]]] = {"SIGKILL": [], "SIGSTOP": []}
        for _ in range(a.rounds):
            for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
                r = fault_round(reps, gw, body, ref, sig)
                results[name].append(r)
                print(f"{name}: {r}")
                m = gw.gw.metrics
                print("  gateway events:", {k: m.get(k) for k in (
                    "resume_broken", "resume_stalled", "resumed_tokens", "resume_failed",
                    "stream_broken", "stream_stalled", "resume_upstream_upstream_unavailable",
                    "resume_upstream_upstream_connection_error")})
        after_p99: dict[str, float] = {}
        for name, rs in results.items():
            after = [p for r in rs for p in r["after_fault"]] or [float("nan")]
            after_p99[name] = p99(after)
            print(f"{name}: broken {sum(r['broken'] for r in rs)} of {N_STREAMS * len(rs)}, "
                  f"identical {sum(r['identical'] for r in rs)}, resumed streams identical "
                  f"{sum(r['resumed_identical'] for r in rs)} of {sum(r['resumed'] for r in rs)}"
                  f", pause p50 {statistics.median(after):.2f} s p99 {p99(after):.2f} s "
                  f"({p99(after) / t_first:.1f}x TTFT)")
        n_stream = len(pauses)
        plain_body = {k: v for k, v in body.items() if k != "stream"}
        plain_ref = httpx.post(f"{gw.url}/v1/chat/completions", json=plain_body,
                               timeout=180).json()["choices"][0]["message"]["content"]
        print(f"plain reference equals the streamed one: {plain_ref == ref}")
        for _ in range(a.plain_rounds):
            for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
                print(f"plain {name}: {plain_round(reps, gw, plain_body, plain_ref, sig, tokens)}")
        for _ in range(a.first_event_rounds):
            print(f"first event: {first_event_round(reps, gw, body, ref)}")
        for what, ps in (("streams", pauses[:n_stream]), ("plain", pauses[n_stream:])):
            print(f"gateway resume pause ({what}): p50 {median(ps):.3f} s p99 {p99(ps):.3f} s "
                  f"over {len(ps)} resumes")
        ratios, loaded_ttft = [], []
        for _ in range(a.steady_rounds):
            base, _ = steady(plain, body)
            res, firsts = steady(gw, body)
            loaded_ttft += firsts
            ratios.append(res / base)
            print(f"steady: resume {res:.1f} tok/s, plain {base:.1f} tok/s, ratio {res / base:.3f}")
        if ratios:
            print(f"steady ratio median {median(ratios):.3f}")
            print(f"TTFT under the 8-stream load: median {median(loaded_ttft) * 1000:.0f} ms, "
                  f"p99 {p99(loaded_ttft) * 1000:.0f} ms")
            # a resumed stream reads its prompt on a replica busy with the others: the same
            # work as a new stream's first token under that load
            for name, v in after_p99.items():
                print(f"{name} pause p99 / TTFT p99 under the 8-stream load: "
                      f"{v / p99(loaded_ttft):.2f}")
        m = gw.gw.metrics
        print("gateway events:", {k: m.get(k) for k in (
            "resume_broken", "resume_stalled", "resume_first_event", "resumed_tokens",
            "resume_failed", "stream_broken", "stream_stalled", "upstream_upstream_timeout",
            "upstream_first_event_timeout")})
        gw.close()
        plain.close()
    finally:
        for r in reps.values():
            r.stop()


if __name__ == "__main__":
    main()

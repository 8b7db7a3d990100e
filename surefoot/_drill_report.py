"""The drill's verdict from what its client recorded: request totals, per-phase latency, the
pass/fail checks, the text report and the timeline plot (latency and throughput with the
faults marked).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surefoot._drill_load import Sample, ms, p

log = logging.getLogger(__name__)

GPU_SIGNALS = ("breaker_opened_ms", "gateway_stopped_routing_ms",
               "last_request_routed_to_node_ms", "node_quarantined_ms", "traffic_rerouted_ms")


def summarise(report: dict[str, Any], samples: list[Sample],
              windows: Mapping[str, tuple[float, float]],
              marks: list[tuple[float, str]], t0: float) -> None:
    """Add totals, errors, per-window latency, checks and marks to ``report``."""
    failed = [x for x in samples if not x.ok]
    streams = [x for x in samples if x.kind == "stream"]
    report["requests"] = {"total": len(samples), "ok": len(samples) - len(failed),
                          "failed": len(failed), "streams": len(streams),
                          "streams_broken": sum(not x.ok for x in streams)}
    # in the compound phase a request may fail when no replica at all was ready: that is
    # capacity lost, not a defect; one that failed while some replica was ready is
    c = report["phases"].get("compound", {})
    excused = c.get("failed", 0) - c.get("failed_while_ready", 0)
    report["continuity"] = {"failed": len(failed) - excused, "total": len(samples),
                            "pass": len(failed) == excused}
    if excused:
        report["continuity"]["failed_with_no_replica_ready"] = excused
    errors: dict[str, int] = {}
    for x in failed:
        what = x.error[:160] or f"HTTP {x.status}"
        errors[what] = errors.get(what, 0) + 1
    report["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:8])
    _window_stats(report, samples, windows)
    report["checks"] = checks(report)
    report["marks"] = [{"t": round(t - t0, 3), "label": label} for t, label in marks]


def _window_stats(report: dict[str, Any], samples: list[Sample],
                  windows: Mapping[str, tuple[float, float]]) -> None:
    ph = report["phases"]
    for name, (t0, t1) in windows.items():
        window = [x for x in samples if t0 <= x.start < t1]
        lat = [x.latency for x in window if x.ok]
        stats = {"requests": len(window), "failed": sum(not x.ok for x in window),
                 "p50_ms": ms(p(lat, 0.5)), "p99_ms": ms(p(lat, 0.99))}
        if name == "steady":
            report["steady"] = stats
        else:
            ph.setdefault(name, {}).update(stats)
    steady_p99 = report.get("steady", {}).get("p99_ms")
    if "pod_delete" in ph:
        d = ph["pod_delete"]
        d["p99_ratio"] = (round(d["p99_ms"] / steady_p99, 3)
                          if d.get("p99_ms") and steady_p99 else None)


def checks(report: dict[str, Any]) -> dict[str, bool]:
    """Each target of the drill and whether this run met it."""
    ph = report["phases"]
    out: dict[str, bool] = {
        "continuity (0 failed requests while a replica was ready)": report["continuity"]["pass"]}
    if "pod_delete" in ph:
        d = ph["pod_delete"]
        out["pod delete: 0 failed"] = d["failed"] == 0
        out["pod delete: p99 <= 2x steady"] = d["p99_ratio"] is not None and d["p99_ratio"] <= 2.0
    if "node_evict" in ph:
        e = ph["node_evict"]
        out["evict: ready <= lone start under the same load + 1 s"] = _within(
            e["recovery_s"], e["budget_s"])
        out["evict: ready <= lone start on an idle machine + 1 s"] = _within(
            e["recovery_s"], e["budget_idle_s"])
    if "gpu_fault" in ph and "skipped" not in ph["gpu_fault"]:
        g = ph["gpu_fault"].get("gateway_stopped_routing_ms")
        out["gpu fault: gateway stops routing <= 100 ms"] = g is not None and g <= 100
    if "redis_kill" in ph and "skipped" not in ph["redis_kill"]:
        r = ph["redis_kill"]
        back = r["redis_back_with_states_ms"]
        out["redis kill: states back <= 2 s"] = back is not None and back <= 2000
        out["redis kill: 0 requests to the quarantined node or forced-open revision"] = (
            r["routed_to_quarantined_node"] == 0 and r["routed_to_forced_open_revision"] == 0)
        out["redis kill: 0 failed"] = r["failed"] == 0
    for phase, label in (("replica_kill", "replica SIGKILL"),
                         ("replica_freeze", "replica SIGSTOP")):
        a = ph.get(phase)
        if a and "skipped" not in a:
            out[f"{label}: 0 broken streams"] = a["broken"] == 0
    c = ph.get("compound")
    if c:
        out["compound: 0 failed while a replica was ready"] = c["failed_while_ready"] == 0
    if "dead_letters" in report:
        out["no remediation event dead-lettered"] = report["dead_letters"]["count"] == 0
    return out


def _within(value: float | None, budget: float | None) -> bool:
    return value is not None and budget is not None and value <= budget


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as text: totals, each phase, then PASS or FAIL per check."""
    lines = ["", "surefoot drill report", "=" * 60]
    st = report.get("steady", {})
    req = report.get("requests", {})
    lines.append(f"requests: {req.get('total')} total, {req.get('failed')} failed, "
                 f"rate {report.get('rate')}/s; streams {req.get('streams')}, "
                 f"{req.get('streams_broken')} broken")
    if report.get("cordoned_at_start"):
        lines.append(f"cordoned before the drill: {', '.join(report['cordoned_at_start'])}")
    lines.append(f"steady: p50 {st.get('p50_ms')} ms, p99 {st.get('p99_ms')} ms")
    ph = report.get("phases", {})
    if "pod_delete" in ph:
        d = ph["pod_delete"]
        lines.append(f"pod delete ({d['victim']}): {d['failed']} failed of {d['requests']}, "
                     f"p99 {d['p99_ms']} ms ({d['p99_ratio']}x steady), replacement ready in "
                     f"{d['recovery_s']} s, first request served by it "
                     f"{d.get('first_served_s')} s after the delete (its latency "
                     f"{d.get('first_latency_ratio')}x the steady median)")
    if "node_evict" in ph:
        lines += _evict_lines(report, ph["node_evict"])
    if "gpu_fault" in ph:
        lines += _gpu_lines(ph["gpu_fault"])
    r = ph.get("redis_kill")
    if r and "skipped" not in r:
        lines.append(f"redis kill ({r['node']} quarantined, {r['forced_open']} forced open): "
                     f"back with both states in {r['redis_back_with_states_ms']} ms; "
                     f"{r['failed']} failed of {r['requests']}; routed to the node "
                     f"{r['routed_to_quarantined_node']}, to the forced-open revision "
                     f"{r['routed_to_forced_open_revision']}")
    lines += _abrupt_lines(ph)
    if "compound" in ph:
        lines += _compound_lines(ph["compound"])
    lines.append("-" * 60)
    for name, ok in report.get("checks", {}).items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    return "\n".join(lines)


def _evict_lines(report: dict[str, Any], e: dict[str, Any]) -> list[str]:
    lines = [f"node evict ({e['node']}): replacement {e['replacement']} on "
             f"{e['replacement_node']} ready in {e['recovery_s']} s; lone start "
             f"{_r(report.get('baseline_start_under_load_s'))} s under load, "
             f"{_r(report.get('baseline_start_s'))} s idle"]
    for k, v in e["phases_s"].items():
        lines.append(f"    {k:<22}{'-' if v is None else f'{v:.3f} s'}")
    return lines


def _abrupt_lines(ph: dict[str, Any]) -> list[str]:
    lines = []
    for phase in ("replica_kill", "replica_freeze"):
        a = ph.get(phase)
        if not a:
            continue
        if "skipped" in a:
            lines.append(f"{phase.replace('_', ' ')}: skipped ({a['skipped']})")
            continue
        lines.append(f"{phase.replace('_', ' ')} ({a['victim']}, {a['streams_on_victim']} "
                     f"streams on it): {a['broken']} broken of {a['streams']} streams; resumed "
                     f"{a['resumed_broken']} broken, {a['resumed_stalled']} stalled, "
                     f"{a.get('resumed_first_event', 0)} before a first event; longest "
                     f"pause {a['max_pause_ms']} ms ({a['max_pause_on_victim_ms']} ms on a "
                     f"stream that started on it)")
    return lines


def _compound_lines(c: dict[str, Any]) -> list[str]:
    lines = [f"compound (cordoned before: {', '.join(c['cordoned_before']) or 'none'}): "
             f"{c['failed']} failed of {c['requests']}, {c['failed_while_ready']} while a "
             f"replica was ready"]
    for st in c["steps"]:
        cap = ", ".join(f"{k} {v}" for k, v in st["capacity"].items())
        lines.append(f"    {st['did']}: {st['failed']} failed ({st['failed_while_ready']} while "
                     f"ready); ready {cap}; cordoned {', '.join(st['cordoned']) or 'none'}")
    return lines


def _gpu_lines(g: dict[str, Any]) -> list[str]:
    if "skipped" in g:
        return [f"gpu fault: skipped ({g['skipped']})"]
    lines = [f"gpu fault (XID 79 on {g['node']}):"]
    for k in GPU_SIGNALS:
        v = g.get(k)
        lines.append(f"    {k[:-3].replace('_', ' '):<30}"
                     f"{'not seen' if v is None else f'{v} ms'}")
    return lines


def plot_timeline(samples: list[Sample], marks: list[tuple[float, str]], t0: float,
                  path: Path) -> None:
    """Latency of every request (failed ones marked) over completions per second, with a
    dashed line at each mark; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    ok = [s for s in samples if s.ok]
    _plot_latency(ax1, ok, [s for s in samples if not s.ok], t0)
    if samples:
        _plot_throughput(ax2, ok, max(s.end for s in samples) - t0, t0)
    ax2.set_ylabel("completed / s")
    ax2.set_xlabel("seconds since the drill started")
    for at, label in marks:
        for ax in (ax1, ax2):
            ax.axvline(at - t0, color="tab:orange", linestyle="--", linewidth=0.8)
        short = label if len(label) <= 26 else label[:25] + "…"
        ax1.annotate(short, (at - t0, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                     fontsize=7, va="top", ha="right", annotation_clip=True)
    fig.suptitle("surefoot drill: latency and throughput, faults marked")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(ax: Any, ok: list[Sample], bad: list[Sample], t0: float) -> None:
    ax.scatter([s.start - t0 for s in ok], [s.latency * 1000 for s in ok], s=6,
               label="ok", color="tab:blue")
    if bad:
        ax.scatter([s.start - t0 for s in bad], [s.latency * 1000 for s in bad], s=24,
                   marker="x", color="tab:red", label="failed")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left")


def _plot_throughput(ax: Any, ok: list[Sample], end: float, t0: float) -> None:
    bins = range(0, int(end) + 2)
    counts = [0] * len(bins)
    for s in ok:
        i = int(s.end - t0)
        if 0 <= i < len(counts):
            counts[i] += 1
    ax.step(list(bins), counts, where="post", color="tab:green")

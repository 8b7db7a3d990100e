"""The fault drill: steady load through the gateway while a pod is deleted, a node is evicted
and a fatal GPU fault is injected; continuity, recovery phases and the reaction timeline are
measured by a client that is independent of the gateway, then written as a report and a PNG.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

PROMPT = "Reply with one word:"
LOAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class DrillSettings:
    rate: float = 5.0  # requests per second, open loop
    duration: float = 60.0  # seconds of steady load before the faults
    out: Path = Path("drill-out")
    max_tokens: int = 4
    settle: float = 3.0  # load kept after each recovery before the next fault
    recovery_timeout: float = 120.0
    faults: tuple[str, ...] = ("pod_delete", "node_evict", "gpu_fault")


@dataclass
class Sample:
    start: float
    end: float
    status: int
    replica: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Target:
    """What the drill acts on: a platform, the gateway, and how to reach the rest."""

    platform: Any
    service: str
    gateway_url: str
    primary_revision: str
    broker_url: str = ""
    redis_url: str = ""
    admin_token: str = ""
    serve_args: tuple[str, ...] = ()
    start_nice: int = 0  # the priority the platform gives a starting replica


class LoadGenerator:
    """Open-loop load at a fixed rate: a request is sent every 1/rate s whatever the answers."""

    def __init__(self, url: str, rate: float, max_tokens: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.interval = 1.0 / rate
        self.max_tokens = max_tokens
        self.clock = clock
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="load")
        self._http = httpx.Client(timeout=LOAD_TIMEOUT,
                                  limits=httpx.Limits(max_connections=64))
        self._thread = threading.Thread(target=self._run, name="load-scheduler", daemon=True)

    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _one(self) -> None:
        start = self.clock()
        try:
            r = self._http.post(self.url, json={"prompt": PROMPT, "max_tokens": self.max_tokens,
                                                "temperature": 0})
            s = Sample(start, self.clock(), r.status_code, r.headers.get("x-surefoot-replica", ""),
                       "" if r.status_code == 200 else r.text[:200])
        except httpx.HTTPError as exc:
            s = Sample(start, self.clock(), 0, "", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.samples.append(s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True)
        self._http.close()

    def window(self, t0: float, t1: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.start < t1]


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Drill:
    def __init__(self, target: Target, settings: DrillSettings,
                 progress: Callable[[str], None] = print) -> None:
        self.t = target
        self.s = settings
        self.say = progress
        self.marks: list[tuple[float, str]] = []
        self.report: dict[str, Any] = {}
        self.t0 = time.time()
        self.load: LoadGenerator | None = None
        self.windows: dict[str, tuple[float, float]] = {}  # phase -> (start, end) of load

    def _note(self, message: str) -> None:
        self.say(f"[{time.time() - self.t0:6.1f}s] {message}")

    def _mark(self, label: str) -> float:
        now = time.time()
        self.marks.append((now, label))
        self._note(label)
        return now

    # --- helpers -----------------------------------------------------------------------------
    def _primaries(self) -> list[Any]:
        return [r for r in self.t.platform.replicas(self.t.service)
                if r.revision == self.t.primary_revision]

    def _wait(self, predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(step)
        return None

    def _ready_primaries(self) -> list[Any]:
        return [r for r in self._primaries() if r.ready and r.phase == "Running"]

    def _measure_start_alone(self, nice: int = 0) -> float | None:
        """Seconds from process start to ready of a lone replica, no checkpoint: the baseline
        (``nice``: started at the priority the platform gives a starting replica)."""
        if not self.t.serve_args:
            return None
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port",
             str(port), *self.t.serve_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None)
        try:
            def ready() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            ok = self._wait(ready, 120, 0.02)
            return time.time() - start if ok else None
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # --- the drill ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        s = self.s
        self.report = {"platform": type(self.t.platform).__name__, "rate": s.rate,
                       "max_tokens": s.max_tokens, "started": self.t0, "phases": {}}
        if not self._wait(lambda: len(self._ready_primaries()) >= 1, 60):
            raise RuntimeError("no ready primary replica: is the system up?")
        baseline = self._measure_start_alone()
        self.report["baseline_start_s"] = baseline
        if baseline is not None:
            self._note(f"a lone replica starts and loads its model in {baseline:.2f} s")
        self.load = LoadGenerator(self.t.gateway_url, s.rate, s.max_tokens).start()
        try:
            steady_start = self._mark("steady load")
            time.sleep(s.duration)
            self.windows["steady"] = (steady_start, time.time())
            done = self.load.window(steady_start, time.time())
            self._note(f"steady: {len(done)} answered, {sum(not x.ok for x in done)} failed")
            # the same lone start, now with this load on the machine: on one machine every
            # "node" shares the cores, so the recovery budget compares like with like
            loaded = self._measure_start_alone(nice=self.t.start_nice)
            self.report["baseline_start_under_load_s"] = loaded
            if loaded is not None:
                self._note(f"a lone replica starts in {loaded:.2f} s under the same load")
            time.sleep(s.settle)
            for fault in s.faults:
                getattr(self, fault)()
                time.sleep(s.settle)
        finally:
            self.load.stop()
        self._summarise()
        return self.report

    def pod_delete(self) -> None:
        victim = self._ready_primaries()[0]
        before = {r.name for r in self._primaries()}
        t_del = self._mark(f"delete pod {victim.name} on {victim.node}")
        self.t.platform.delete_replica(victim.name)
        want = len(before)

        def recovered() -> Any:
            ready = [r for r in self._ready_primaries() if r.name != victim.name]
            return ready if len(ready) >= want else None

        ready = self._wait(recovered, self.s.recovery_timeout)
        t_ready = time.time()
        new = [r.name for r in (ready or []) if r.name not in before]
        self._mark(f"replacement {', '.join(new) or '?'} ready" if ready
                   else "replacement not ready in time")
        time.sleep(self.s.settle)
        self.windows["pod_delete"] = (t_del, time.time())
        self.report["phases"]["pod_delete"] = {
            "victim": victim.name, "node": victim.node, "replacement": new,
            "recovery_s": round(t_ready - t_del, 3) if ready else None,
        }

    def _snapshot_primaries(self) -> None:
        headers = {"Authorization": f"Bearer {self.t.admin_token}"} if self.t.admin_token else {}
        for r in self._ready_primaries():
            if r.url:
                try:
                    httpx.post(f"{r.url}/admin/snapshot", headers=headers, timeout=30)
                except httpx.HTTPError as exc:
                    self._note(f"snapshot of {r.name} failed: {exc}")

    def node_evict(self) -> None:
        self._snapshot_primaries()
        self._wait(lambda: len(self._ready_primaries()) >= len(self._primaries()), 60)
        # a node whose only replica is a primary, when there is one: the measured recovery is
        # then that replica's alone (on one machine, two replacements share the same cores)
        everyone = self.t.platform.replicas(self.t.service)
        per_node: dict[str | None, int] = {}
        for r in everyone:
            per_node[r.node] = per_node.get(r.node, 0) + 1
        ready = self._ready_primaries()
        victim = min(ready, key=lambda r: (per_node.get(r.node, 0), -ready.index(r)))
        node = victim.node
        before = {r.name for r in self._primaries()}
        t_ev = self._mark(f"evict node {node}")
        self.t.platform.cordon(node)
        report = self.t.platform.evict(node, 60.0)

        def replacement() -> Any:
            for r in self._primaries():
                if r.name not in before and r.ready:
                    return r
            return None

        new = self._wait(replacement, self.s.recovery_timeout, 0.01)
        t_ready = time.time()
        phases: dict[str, float | None] = {}
        first_token = None
        if new is not None:
            self._mark(f"replacement {new.name} ready on {new.node}")
            first_token = self._first_token(new.url)
            phases = self._phases(new, t_ev)
        self.t.platform.uncordon(node)
        self.windows["node_evict"] = (t_ev, time.time())
        baseline = self.report.get("baseline_start_under_load_s") or self.report.get(
            "baseline_start_s")
        recovery = round(t_ready - t_ev, 3) if new else None
        self.report["phases"]["node_evict"] = {
            "node": node, "evicted": list(report.evicted), "replacement": new.name if new else None,
            "replacement_node": new.node if new else None, "recovery_s": recovery,
            "phases_s": {**phases,
                         "first_token": round(first_token - t_ev, 3) if first_token else None},
            "budget_s": round(baseline + 1.0, 3) if baseline else None,
            "budget_idle_s": round(self.report["baseline_start_s"] + 1.0, 3)
            if self.report.get("baseline_start_s") else None,
        }

    def _first_token(self, url: str | None) -> float | None:
        if not url:
            return None
        try:
            with httpx.stream("POST", f"{url}/v1/completions", timeout=30, json={
                    "prompt": PROMPT, "max_tokens": 2, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        return time.time()
        except httpx.HTTPError:
            return None
        return None

    def _phases(self, replica: Any, t_ev: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        status = getattr(self.t.platform, "status", None)
        if callable(status):
            for r in status().get("replicas", []):
                if r["name"] == replica.name:
                    for key, label in (("scheduled", "scheduled"), ("started", "process_started"),
                                       ("ready_at", "ready")):
                        out[label] = round(r[key] - t_ev, 3) if r.get(key) else None
        try:
            st = httpx.get(f"{replica.url}/admin/status", timeout=5).json()
            for key in ("checkpoint_restored", "model_loaded", "state_restored"):
                v = st.get("phases", {}).get(key)
                out[key] = round(v - t_ev, 3) if v else None
        except (httpx.HTTPError, ValueError):
            pass
        return out

    def gpu_fault(self) -> None:
        if not (self.t.broker_url and self.t.redis_url):
            self.report["phases"]["gpu_fault"] = {"skipped": "no broker or redis to inject into"}
            return
        import redis as redis_lib

        from events import DETECTOR_INJECT, GpuSourceSettings, Sender, SenderSettings, xid_event
        from knative.breakers import BreakerRegistrySettings, BreakerStore, node_key

        victim = self._ready_primaries()[0]
        node = victim.node
        key = node_key(node)
        store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=self.t.redis_url))
        seen: dict[str, float] = {}
        stop = threading.Event()

        # Each signal is watched on its own, so one slow read does not delay another.
        pubsub = redis_lib.Redis.from_url(self.t.redis_url).pubsub()
        pubsub.subscribe(store.channel)

        def breaker_messages() -> None:
            while not stop.is_set() and "breaker_opened" not in seen:
                msg = pubsub.get_message(timeout=0.05)
                if not msg or msg.get("type") != "message":
                    continue
                try:
                    t = json.loads(msg["data"])
                except ValueError:
                    continue
                if t.get("key") == key and t.get("new") in ("open", "forced_open"):
                    seen.setdefault("breaker_opened", time.time())

        def poll(name: str, check: Callable[[], bool]) -> Callable[[], None]:
            def run() -> None:
                while not stop.is_set() and name not in seen:
                    try:
                        if check():
                            seen.setdefault(name, time.time())
                    except Exception:  # the system under test may answer slowly; keep looking
                        pass
                    stop.wait(0.002)
            return run

        gw = httpx.Client(timeout=2)
        headers = {"Authorization": f"Bearer {self.t.admin_token}"}
        watchers = [
            threading.Thread(target=breaker_messages, daemon=True),
            threading.Thread(target=poll("gateway_stopped_routing", lambda: _view_open(
                gw.get(f"{self.t.gateway_url}/admin/breakers", headers=headers).json(), key)),
                daemon=True),
            threading.Thread(target=poll("node_quarantined", lambda: any(
                n.name == node and n.unschedulable for n in self.t.platform.nodes())),
                daemon=True),
            threading.Thread(target=poll("traffic_rerouted", lambda: any(
                t.revision == self.t.primary_revision and t.percent < 100
                for t in self.t.platform.traffic(self.t.service))), daemon=True),
        ]
        event = xid_event(GpuSourceSettings(node=node), None, 79,
                          message="GPU has fallen off the bus.", detector=DETECTOR_INJECT)
        sender = Sender(SenderSettings())  # long-lived, as the GPU source's own sender is
        for w in watchers:
            w.start()
        t_inj = self._mark(f"inject XID 79 on {node}")
        sender.send(event, self.t.broker_url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not {
                "breaker_opened", "gateway_stopped_routing", "node_quarantined"} <= set(seen):
            time.sleep(0.01)
        time.sleep(1.0)  # a reroute, if one follows, comes soon after
        stop.set()
        for w in watchers:
            w.join(3)
        pubsub.close()
        gw.close()
        for name, at in sorted(seen.items(), key=lambda kv: kv[1]):
            self.marks.append((at, name.replace("_", " ")))
            self._note(f"{name.replace('_', ' ')} after {(at - t_inj) * 1000:.1f} ms")
        assert self.load is not None
        on_node = {r.name for r in self.t.platform.replicas(self.t.service) if r.node == node}
        on_node.add(victim.name)
        served = [x for x in self.load.window(t_inj, time.time()) if x.replica in on_node]
        last = max((x.start for x in served), default=None)
        self.report["phases"]["gpu_fault"] = {
            "node": node, "xid": 79,
            **{f"{k}_ms": _ms(v - t_inj) for k, v in seen.items()},
            "last_request_routed_to_node_ms": _ms(last - t_inj) if last else None,
        }
        self._release(node, store, key)
        self.windows["gpu_fault"] = (t_inj, time.time())

    def _release(self, node: str, store: Any, key: str) -> None:
        try:
            self.t.platform.uncordon(node)
            self.t.platform.label(node, "surefoot.dev/gpu-error", None)
            store.reset(key, "drill: released")
        except Exception as exc:  # the report stands; say what was left behind
            self._note(f"could not release {node}: {exc}")

    # --- report ------------------------------------------------------------------------------
    def _summarise(self) -> None:
        assert self.load is not None
        samples = self.load.samples
        failed = [x for x in samples if not x.ok]
        self.report["requests"] = {"total": len(samples), "ok": len(samples) - len(failed),
                                   "failed": len(failed)}
        self.report["continuity"] = {"failed": len(failed), "total": len(samples),
                                     "pass": not failed}
        errors: dict[str, int] = {}
        for x in failed:
            errors[x.error[:160] or f"HTTP {x.status}"] = errors.get(
                x.error[:160] or f"HTTP {x.status}", 0) + 1
        self.report["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:8])
        ph = self.report["phases"]
        for name, (t0, t1) in self.windows.items():
            window = [x for x in samples if t0 <= x.start < t1]
            lat = [x.latency for x in window if x.ok]
            stats = {"requests": len(window), "failed": sum(not x.ok for x in window),
                     "p50_ms": _ms(p(lat, 0.5)), "p99_ms": _ms(p(lat, 0.99))}
            if name == "steady":
                self.report["steady"] = stats
            else:
                ph.setdefault(name, {}).update(stats)
        steady_p99 = self.report.get("steady", {}).get("p99_ms")
        if "pod_delete" in ph:
            d = ph["pod_delete"]
            d["p99_ratio"] = (round(d["p99_ms"] / steady_p99, 3)
                              if d.get("p99_ms") and steady_p99 else None)
        checks: dict[str, Any] = {"continuity (0 failed requests)": not failed}
        if "pod_delete" in ph:
            d = ph["pod_delete"]
            checks["pod delete: 0 failed"] = d["failed"] == 0
            checks["pod delete: p99 <= 2x steady"] = (d["p99_ratio"] is not None
                                                      and d["p99_ratio"] <= 2.0)
        if "node_evict" in ph:
            e = ph["node_evict"]
            checks["evict: ready <= lone start under the same load + 1 s"] = (
                e["recovery_s"] is not None and e["budget_s"] is not None
                and e["recovery_s"] <= e["budget_s"])
            checks["evict: ready <= lone start on an idle machine + 1 s"] = (
                e["recovery_s"] is not None and e["budget_idle_s"] is not None
                and e["recovery_s"] <= e["budget_idle_s"])
        if "gpu_fault" in ph and "skipped" not in ph["gpu_fault"]:
            g = ph["gpu_fault"].get("gateway_stopped_routing_ms")
            checks["gpu fault: gateway stops routing <= 100 ms"] = g is not None and g <= 100
        self.report["checks"] = checks
        self.report["marks"] = [{"t": round(t - self.t0, 3), "label": label}
                                for t, label in self.marks]

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        report_path = out / "report.json"
        report_path.write_text(json.dumps(self.report, indent=2, default=str))
        png = out / "timeline.png"
        assert self.load is not None
        plot_timeline(self.load.samples, self.marks, self.t0, png)
        return report_path, png


def _view_open(view: Any, key: str) -> bool:
    """Does the gateway's own (in-memory) view, from /admin/breakers, hold ``key`` open?"""
    if isinstance(view, dict) and isinstance(view.get("view"), dict):
        return view["view"].get(key) in ("open", "forced_open")
    items = view.get("breakers", view) if isinstance(view, dict) else view
    if isinstance(items, dict):
        entry = items.get(key)
        return isinstance(entry, dict) and entry.get("state") in ("open", "forced_open")
    if isinstance(items, list):
        return any(isinstance(b, dict) and b.get("key") == key
                   and b.get("state") in ("open", "forced_open") for b in items)
    return False


def plot_timeline(samples: list[Sample], marks: list[tuple[float, str]], t0: float,
                  path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    ok = [s for s in samples if s.ok]
    bad = [s for s in samples if not s.ok]
    ax1.scatter([s.start - t0 for s in ok], [s.latency * 1000 for s in ok], s=6,
                label="ok", color="tab:blue")
    if bad:
        ax1.scatter([s.start - t0 for s in bad], [s.latency * 1000 for s in bad], s=24,
                    marker="x", color="tab:red", label="failed")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper left")
    if samples:
        end = max(s.end for s in samples) - t0
        bins = range(0, int(end) + 2)
        counts = [0] * len(bins)
        for s in ok:
            i = int(s.end - t0)
            if 0 <= i < len(counts):
                counts[i] += 1
        ax2.step(list(bins), counts, where="post", color="tab:green")
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


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_report(report: dict[str, Any]) -> str:
    lines = ["", "surefoot drill report", "=" * 60]
    st = report.get("steady", {})
    req = report.get("requests", {})
    lines.append(f"requests: {req.get('total')} total, {req.get('failed')} failed, "
                 f"rate {report.get('rate')}/s")
    lines.append(f"steady: p50 {st.get('p50_ms')} ms, p99 {st.get('p99_ms')} ms")
    ph = report.get("phases", {})
    if "pod_delete" in ph:
        d = ph["pod_delete"]
        lines.append(f"pod delete ({d['victim']}): {d['failed']} failed of {d['requests']}, "
                     f"p99 {d['p99_ms']} ms ({d['p99_ratio']}x steady), replacement ready in "
                     f"{d['recovery_s']} s")
    if "node_evict" in ph:
        e = ph["node_evict"]
        lines.append(f"node evict ({e['node']}): replacement {e['replacement']} on "
                     f"{e['replacement_node']} ready in {e['recovery_s']} s; lone start "
                     f"{_r(report.get('baseline_start_under_load_s'))} s under load, "
                     f"{_r(report.get('baseline_start_s'))} s idle")
        for k, v in e["phases_s"].items():
            lines.append(f"    {k:<22}{'-' if v is None else f'{v:.3f} s'}")
    if "gpu_fault" in ph:
        g = ph["gpu_fault"]
        if "skipped" in g:
            lines.append(f"gpu fault: skipped ({g['skipped']})")
        else:
            lines.append(f"gpu fault (XID 79 on {g['node']}):")
            for k in ("breaker_opened_ms", "gateway_stopped_routing_ms",
                      "last_request_routed_to_node_ms", "node_quarantined_ms",
                      "traffic_rerouted_ms"):
                v = g.get(k)
                lines.append(f"    {k[:-3].replace('_', ' '):<30}"
                             f"{'not seen' if v is None else f'{v} ms'}")
    lines.append("-" * 60)
    for name, ok in report.get("checks", {}).items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    return "\n".join(lines)

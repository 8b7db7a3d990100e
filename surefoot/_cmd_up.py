"""``surefoot up`` (the whole system on one machine) and the commands that act on it:
``status``, ``kill POD``, ``evict NODE`` — on the local platform or on Knative."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surefoot.cli import EXIT_FAILED, CliError

if TYPE_CHECKING:
    from functions import FunctionSettings
    from knative.breakers import BreakerRegistrySettings
    from surefoot._up import LocalSystem, UpSettings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("up", help="run the whole system on this machine")
    p.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes (default 4)")
    p.add_argument("--replicas", type=int, default=3, help="primary replicas (default 3)")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--no-embeddings", action="store_true",
                   help="serve no embedding model (faster start)")
    p.add_argument("--checkpoint-interval", type=float, default=300.0)
    p.add_argument("--grace-seconds", type=float, default=10.0)
    p.add_argument("--state-dir", help="where state, logs and checkpoints go "
                   "(default ~/.cache/surefoot/run)")
    p.add_argument("--redis-url", help="a Redis to use instead of the embedded one")
    p.add_argument("--standby", type=int, default=1,
                   help="loaded standby replicas per revision that take over a lost replica "
                        "at once (default 1; 0: none)")
    p.add_argument("--gateways", type=int, default=2,
                   help="gateway processes sharing the port, so that one lost leaves the "
                        "others serving (default 2)")
    p.set_defaults(func=run_up)

    s = subparsers.add_parser("status", help="replicas, breakers, traffic, latest checkpoint")
    _platform_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_status)
    k = subparsers.add_parser("kill", help="delete a replica (pod)")
    k.add_argument("pod")
    _platform_flags(k)
    k.set_defaults(func=run_kill)
    sb = subparsers.add_parser("standby", help="loaded standbys per revision, from now on "
                               "(local platform; on Knative: the render config's `standby`)")
    sb.add_argument("count", type=int)
    sb.add_argument("--state-dir", help="state of `surefoot up`")
    sb.set_defaults(func=run_standby, platform="local")
    e = subparsers.add_parser("evict", help="cordon a node and evict its replicas")
    e.add_argument("node")
    e.add_argument("--timeout", type=float, default=120.0)
    _platform_flags(e)
    e.set_defaults(func=run_evict)


def _platform_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platform", choices=("local", "knative"), default="local")
    p.add_argument("--state-dir", help="state of `surefoot up` (local platform)")


def _state(args: argparse.Namespace) -> Any:
    from surefoot._up import RunState, UpError, default_state_dir

    try:
        return RunState.read(Path(args.state_dir) if args.state_dir
                             else default_state_dir(os.environ))
    except UpError as exc:
        raise CliError(str(exc)) from exc


def platform_for(args: argparse.Namespace) -> tuple[Any, str]:
    """The platform named by ``--platform`` and the service it serves."""
    if args.platform == "knative":
        from knative.platforms.kube import KnativePlatform, KubeSettings

        try:
            kube = KubeSettings.from_env(os.environ)
            return KnativePlatform.from_settings(kube), kube.service
        except Exception as exc:  # no kubeconfig, bad context
            raise CliError(f"--platform knative: {exc}") from exc
    from knative.platforms.local import LocalPlatformClient

    st = _state(args)
    return LocalPlatformClient(st.control_url), st.service


class _MountedFunctions:
    """The functions host of ``surefoot up``: a server over the local platform."""

    def __init__(self, server: Any, ctx: Any) -> None:
        self.server = server
        self.ctx = ctx
        self.url = server.url

    def triggers(self) -> list[Any]:
        return list(self.server.triggers())

    def stop(self) -> None:
        self.server.stop()
        self.ctx.close()


def functions_factory(system: LocalSystem) -> _MountedFunctions:
    """The functions host mounted in-process on the local platform, fed by broker triggers."""
    from functions import FunctionsServer, build_context

    assert system.platform is not None  # started before the functions are mounted
    settings, breaker_settings = _function_settings(system)
    ctx = build_context(settings, system.platform, breaker_settings=breaker_settings,
                        sink=system.publisher)
    server = FunctionsServer(settings, ctx).start()
    return _MountedFunctions(server, ctx)


def _function_settings(
        system: LocalSystem) -> tuple[FunctionSettings, BreakerRegistrySettings]:
    """The functions' and the breakers' settings from the environment ``surefoot up`` was
    given; a bad variable is an :class:`UpError` naming it (bad input: exit 2)."""
    from envreader import EnvError
    from functions import FunctionSettings, SettingsError
    from knative.breakers import BreakerRegistrySettings, InvalidBreakerSettings
    from surefoot._up import UpError

    s = system.s
    try:
        settings = FunctionSettings.from_env(
            system.env, platform="local", service=s.service,
            primary_revision=s.primary_revision, fallback_revision=s.fallback_revision,
            redis_url=system.redis_url, admin_token=system.admin_token,
            fallback_max_scale=s.nodes,
            # one machine: one extra fallback replica, not two, while the primary is out
            fallback_boost=1,
        )
        breakers = BreakerRegistrySettings.from_env(system.env, redis_url=system.redis_url)
    except (EnvError, SettingsError, InvalidBreakerSettings) as exc:
        raise UpError(str(exc)) from None
    return settings, breakers


def _up_settings(args: argparse.Namespace) -> UpSettings:
    from surefoot._up import UpSettings

    if not 0 < args.port < 65536:
        raise CliError(f"--port {args.port} is not a TCP port")
    if args.nodes < 1 or args.replicas < 1:
        raise CliError("--nodes and --replicas must be at least 1")
    if not 1 <= args.gateways <= 8:
        raise CliError(f"--gateways {args.gateways}: must be within 1..8")
    if not 0 <= args.standby <= 4:
        raise CliError(f"--standby {args.standby}: must be within 0..4")
    return UpSettings(
        host=args.host, port=args.port, nodes=args.nodes, primary_replicas=args.replicas,
        model=args.model, embeddings=not args.no_embeddings,
        checkpoint_interval=args.checkpoint_interval, grace_seconds=args.grace_seconds,
        state_dir=args.state_dir or "", redis_url=args.redis_url or "",
        gateways=args.gateways, standby=args.standby,
    )


def run_up(args: argparse.Namespace) -> int:
    from envreader import EnvError
    from surefoot._up import LocalSystem, UpError

    system = LocalSystem(_up_settings(args), os.environ, functions_factory)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # Only a flag, checked between the steps of start-up: an exception raised wherever the
        # signal lands could lose a child just started (inside Popen) or be dropped by Python
        # (inside a __del__). A second Ctrl-C does interrupt at once.
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failed: UpError | EnvError | None = None
    try:
        _serve_until_stopped(system, stop)
    except (UpError, EnvError) as exc:
        failed = exc
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if failed is None:
            print("\nstopping...", file=sys.stderr, flush=True)
        system.stop()  # also what a failed start left running
        if failed is None:
            print("stopped.", file=sys.stderr, flush=True)
    if failed is not None:  # one line on stderr, nothing else
        code = EXIT_FAILED if isinstance(failed, UpError) and failed.failed else 2
        raise CliError(str(failed), code=code)
    return 0


def _serve_until_stopped(system: LocalSystem, stop: threading.Event) -> None:
    """Start ``system``, say where everything is, and wait until ``stop`` is set (then raise
    KeyboardInterrupt)."""
    from knative.breakers import redacted
    from knative.platforms.local import LocalPlatformClient
    from surefoot._up_durable import dead_letter_path

    def interrupted() -> None:
        if stop.is_set():
            raise KeyboardInterrupt

    settings = system.s
    system.start()
    interrupted()
    print(f"surefoot up: starting {settings.primary_replicas} primary and "
          f"{settings.fallback_replicas} fallback replicas on {settings.nodes} nodes...",
          flush=True)
    ready = system.wait_ready(stop)
    interrupted()
    st = system.state
    assert st is not None
    print(f"\ngateway (OpenAI API)  {st.gateway_url}/v1\ncontrol API           "
          f"{st.control_url}\nbroker                {st.broker_url}\nfunctions             "
          f"{st.functions_url or '-'}\nredis                 {redacted(st.redis_url)}\n"
          f"checkpoints           {st.checkpoint_dir}\nlogs                  {st.log_dir}\n")
    print(format_status(collect_status(
        LocalPlatformClient(st.control_url), st.service, st.redis_url, st.checkpoint_dir,
        st.control_url, dead_letter_file=str(dead_letter_path(system.state_dir)))))
    if not ready:
        print("\nnot every replica is ready yet: see `surefoot status` and the logs",
              flush=True)
    print("\nCtrl-C stops everything.", flush=True)
    while not stop.wait(1.0):
        pass


def _components(control_url: str) -> dict[str, Any]:
    """Redis and the gateway as ``surefoot up`` supervises them (phase, pid, restarts);
    nothing for a control API that supervises none."""
    import httpx

    try:
        r = httpx.get(f"{control_url}/components", timeout=2)
        if r.status_code == 404:
            return {}
        r.raise_for_status()
        return {"components": list(r.json()["components"])}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return {"components": [], "components_error": str(exc)}


QUARANTINE_LABEL = "surefoot.dev/gpu-error"  # what quarantine_node labels its nodes with
FUNCTIONS_PREFIX = "surefoot:fn"  # the functions' Redis prefix (quarantine reasons)


def collect_status(platform: Any, service: str, redis_url: str | None,
                   checkpoint_dir: str | None, control_url: str | None = None, *,
                   dead_letter_file: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"service": service}
    if control_url:
        out.update(_components(control_url))
    out["replicas"] = [r.__dict__ for r in platform.replicas(service)]
    out["traffic"] = [t.__dict__ for t in platform.traffic(service)]
    out["nodes"] = [n.__dict__ for n in platform.nodes()]
    scales, reasons, standby = _platform_detail(platform)
    out["standby"] = standby
    out["pending"] = [{"name": r["name"], "revision": r["revision"],
                       "reason": reasons.get(r["name"]) or ""}
                      for r in out["replicas"] if r["phase"] == "Pending"]
    out["breakers"] = []
    if redis_url:
        try:
            from knative.breakers import BreakerRegistrySettings, BreakerStore

            store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=redis_url))
            statuses, _ = store.statuses()
            out["breakers"] = [b.to_json() for b in statuses]
        except Exception as exc:  # status still answers when Redis does not
            out["breakers_error"] = str(exc)
    out["capacity"] = _capacity(out["replicas"], out["traffic"], scales, out["breakers"])
    out["cordoned"] = _cordoned(out["nodes"], redis_url)
    if dead_letter_file:
        from surefoot._up_durable import DeadLetterLog

        out["dead_letters"] = DeadLetterLog(Path(dead_letter_file)).describe(last=5)
    out["latest_checkpoint"] = None
    if checkpoint_dir and Path(checkpoint_dir).exists():
        from checkpoint_store import CheckpointStore, FilesystemBackend

        try:
            m = CheckpointStore(FilesystemBackend(checkpoint_dir, create=False)).latest(
                verify=False)
            if m is not None:
                out["latest_checkpoint"] = {"id": m.id, "model_id": m.model_id,
                                            "revision": m.revision, "created": m.created}
        except Exception as exc:
            out["checkpoint_error"] = str(exc)
    return out


def _platform_detail(platform: Any
                     ) -> tuple[dict[str, int], dict[str, str], list[dict[str, Any]]]:
    """The revisions' min-scale, why each Pending replica waits, and the warm standbys, from
    the platform's own status when it has one (the local platform); empty otherwise."""
    status = getattr(platform, "status", None)
    if not callable(status):
        return {}, {}, []
    try:
        st = status()
    except Exception:  # the detail is optional; the status answers without it
        return {}, {}, []
    reasons = {str(r.get("name")): str(r.get("pending_reason") or r.get("reason") or "")
               for r in st.get("replicas", []) if isinstance(r, dict)}
    scales = {str(v.get("name")): int(v.get("min_scale") or 0)
              for v in st.get("revisions", []) if isinstance(v, dict)}
    standby = [{k: s.get(k) for k in ("name", "revision", "phase", "pid", "restarts")}
               for s in st.get("standby") or [] if isinstance(s, dict)]
    return scales, reasons, standby


def _capacity(replicas: list[dict[str, Any]], traffic: list[Any], scales: dict[str, int],
              breakers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per revision: ready replicas, those on nodes whose breaker is open, and the desired
    count (its min-scale when known, else how many replicas it has)."""
    bad = {str(b.get("key", "")).removeprefix("node:") for b in breakers
           if str(b.get("key", "")).startswith("node:")
           and b.get("state") in ("open", "forced_open", "half_open")}
    names = list(dict.fromkeys([t["revision"] for t in traffic]
                               + [r["revision"] for r in replicas]))
    out = []
    for name in names:
        mine = [r for r in replicas if r["revision"] == name and r["phase"] != "Terminating"]
        ready = [r for r in mine if r["ready"]]
        behind = sum(1 for r in ready if r["node"] in bad)
        out.append({"revision": name, "ready": len(ready) - behind, "behind_open_breakers": behind,
                    "desired": scales.get(name, len(mine)),
                    "pending": sum(1 for r in mine if r["phase"] == "Pending")})
    return out


def _cordoned(nodes: list[dict[str, Any]], redis_url: str | None) -> list[dict[str, Any]]:
    """The cordoned nodes and by whom: Surefoot's quarantine labels its nodes (and keeps why
    in Redis); any other cordon is someone else's (an operator's drain, a repair)."""
    out = []
    for n in nodes:
        if not n.get("unschedulable"):
            continue
        ours = (n.get("labels") or {}).get(QUARANTINE_LABEL) == "true"
        row: dict[str, Any] = {"node": n["name"],
                               "by": "surefoot quarantine" if ours else "not Surefoot"}
        if ours and redis_url:
            row["reason"] = _quarantine_reason(redis_url, n["name"])
        out.append(row)
    return out


def _quarantine_reason(redis_url: str, node: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            raw = client.hget(f"{FUNCTIONS_PREFIX}:quarantine:{node}", "reason")
        finally:
            client.close()
    except redis.RedisError:
        return ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _pending_lines(pending: list[dict[str, Any]]) -> list[str]:
    """The Pending replicas, and why each waits when the platform says."""
    if not pending:
        return []
    reasons = [p.get("reason") or "" for p in pending]
    why = ("no node satisfies anti-affinity" if all(not r or "anti-affinity" in r
                                                   for r in reasons)
           else "no node can take them")
    lines = [f"pending ({why}): " + ", ".join(p["name"] for p in pending)]
    lines.extend(f"  {p['name']}: {p['reason']}" for p in pending if p.get("reason"))
    return lines


def _degraded_lines(st: dict[str, Any]) -> list[str]:
    lines = []
    caps = st.get("capacity") or []
    if caps:
        parts = []
        for c in caps:
            text = f"{c['revision']} {c['ready']}/{c['desired']} ready"
            if c.get("behind_open_breakers"):
                text += f" (+{c['behind_open_breakers']} behind open node breakers)"
            if c.get("pending"):
                text += f", {c['pending']} pending"
            if c["ready"] == 0:
                text += " (NONE READY)"
            parts.append(text)
        lines.append("capacity: " + "; ".join(parts))
    cordoned = st.get("cordoned") or []
    lines.append("cordoned: " + ("; ".join(
        f"{c['node']} by {c['by']}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in cordoned) if cordoned else "none"))
    dl = st.get("dead_letters")
    if dl is not None:
        lines.append(f"dead letters: {dl['count']}" + (f" ({dl['path']})" if dl["count"] else ""))
        for row in dl.get("last") or []:
            lines.append(f"  {row.get('time') or '-'} {row.get('type')} {row.get('id')} -> "
                         f"{row.get('dest')}: HTTP {row.get('code') or '-'}"
                         + (f" {row['reason']}" if row.get("reason") else ""))
    return lines


def format_status(st: dict[str, Any]) -> str:
    lines = [f"{'REPLICA':<28}{'NODE':<9}{'REVISION':<22}{'PHASE':<18}{'READY':<7}"
             f"{'PID':<8}URL"]
    for r in st["replicas"]:
        lines.append(f"{r['name']:<28}{r['node'] or '-':<9}{r['revision']:<22}{r['phase']:<18}"
                     f"{'yes' if r['ready'] else 'no':<7}{r['pid'] or '-'!s:<8}{r['url'] or '-'}")
    pending = st.get("pending")
    if pending is None:  # a status from before Pending reasons were collected
        pending = [{"name": r["name"]} for r in st["replicas"] if r["phase"] == "Pending"]
    lines.extend(_pending_lines(pending))
    lines.append("")
    lines.append("traffic: " + ", ".join(
        f"{t['revision']}={t['percent']}%" + (f" ({t['tag']})" if t.get("tag") else "")
        for t in st["traffic"]))
    lines.append("nodes: " + ", ".join(
        n["name"] + (" (cordoned)" if n["unschedulable"] else "") for n in st["nodes"]))
    lines.extend(_degraded_lines(st))
    for sb in st.get("standby") or []:
        lines.append(f"standby {sb['name']} ({sb['revision']}): {sb['phase']}"
                     + (f" (pid {sb['pid']})" if sb.get("pid") else "")
                     + (f", restarts {sb['restarts']}" if sb.get("restarts") else ""))
    breakers = st.get("breakers") or []
    if st.get("breakers_error"):
        lines.append(f"breakers: unknown ({st['breakers_error']})")
    else:
        lines.append("breakers: " + (", ".join(
            f"{b.get('key')}={b.get('state')}" for b in breakers) if breakers else "none open"))
    ck = st.get("latest_checkpoint")
    lines.append("latest checkpoint: " + (f"{ck['id']} ({ck['revision']})" if ck else "none"))
    for c in st.get("components") or []:
        lines.append(f"{c['name']}: {c['phase']}" + (f" (pid {c['pid']})" if c["pid"] else "")
                     + f", restarts {c['restarts']}"
                     + (f", last: {c['last_error']}" if c.get("last_error") else ""))
    if st.get("components_error"):
        lines.append(f"components: unknown ({st['components_error']})")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    platform, service = platform_for(args)
    from knative import PlatformError

    redis_url = ckpt = control = dead = None
    if args.platform == "local":
        from surefoot._up import default_state_dir
        from surefoot._up_durable import dead_letter_path

        st = _state(args)
        redis_url, ckpt, control = st.redis_url, st.checkpoint_dir, st.control_url
        state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(os.environ)
        dead = str(dead_letter_path(state_dir))
    try:
        status = collect_status(platform, service, redis_url, ckpt, control,
                                dead_letter_file=dead)
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


def run_kill(args: argparse.Namespace) -> int:
    from knative import NotFound, PlatformError

    platform, service = platform_for(args)
    try:
        platform.delete_replica(args.pod)
    except NotFound:
        try:
            names = ", ".join(r.name for r in platform.replicas(service)) or "none"
        except PlatformError as exc:  # the hint is optional; the answer is not
            names = f"unknown: {exc}"
        raise CliError(f"no replica named {args.pod!r} (replicas: {names})") from None
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    print(f"deleted {args.pod}")
    return 0


def run_standby(args: argparse.Namespace) -> int:
    from knative import PlatformError

    if not 0 <= args.count <= 4:  # as `surefoot up --standby`
        raise CliError(f"standby {args.count}: must be within 0..4")
    platform, _ = platform_for(args)
    try:
        platform.set_standby(args.count)
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    print(f"standbys per revision: {args.count}")
    return 0


def run_evict(args: argparse.Namespace) -> int:
    from knative import NotFound, PlatformError

    if not 0 <= args.timeout < float("inf"):  # checked before the node is cordoned
        raise CliError(f"--timeout {args.timeout} is not a number of seconds >= 0")
    platform, _ = platform_for(args)
    try:
        platform.cordon(args.node)
        report = platform.evict(args.node, args.timeout)
    except NotFound as exc:
        raise CliError(str(exc)) from None
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    print(f"node {args.node} cordoned; evicted: {', '.join(report.evicted) or 'none'}"
          + (f"; refused (disruption budget): {', '.join(report.refused)}"
             if report.refused else ""))
    return 0 if report.complete else EXIT_FAILED

"""``surefoot drill``: the fault drill with its report (local platform or Knative)."""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surefoot.cli import EXIT_FAILED, CliError

if TYPE_CHECKING:
    from surefoot._up import LocalSystem

FAULTS = ("pod_delete", "node_evict", "gpu_fault", "redis_kill", "replica_kill", "replica_freeze",
          "compound")
DEFAULT_FAULTS = ("pod_delete", "node_evict", "gpu_fault")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "drill", help="load + faults (delete a pod, evict a node, a fatal GPU fault, SIGKILL "
                      "or SIGSTOP a replica, faults piled up); report",
        description="Steady load through the gateway while faults are injected. Attaches to a "
                    "running `surefoot up` (local) or starts its own; exit 1 when a request "
                    "failed while a replica was ready, a stream broke, or the broker "
                    "dead-lettered an event.")
    p.add_argument("--platform", choices=("local", "knative"), default="local")
    p.add_argument("--rate", type=float, default=5.0, help="requests per second (default 5)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of steady load before the faults (default 60)")
    p.add_argument("--out", default="drill-out", help="report directory (default drill-out)")
    p.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                   help=f"comma-separated subset of {','.join(FAULTS)}")
    p.add_argument("--max-tokens", type=int, default=4,
                   help="tokens per plain completion (streams get 4x as many; default 4)")
    p.add_argument("--streams", type=int, default=1,
                   help="streaming clients beside the plain load (default 1; 0: none)")
    p.add_argument("--hold", type=float, default=8.0,
                   help="seconds each abrupt or compound fault is held before the next "
                        "(default 8)")
    p.add_argument("--state-dir", help="state of a running `surefoot up` to attach to")
    p.add_argument("--embeddings", action="store_true",
                   help="when the drill starts its own system: serve the embedding model too "
                        "(off by default: the drill's load is completions)")
    p.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                   help="(the default) no embedding model in the drill's own system")
    p.add_argument("--gateway", help="with --platform knative: the gateway URL")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace) -> int:
    from surefoot._drill import Drill, DrillSettings
    from surefoot._drill_report import format_report

    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise CliError(f"--faults: unknown {', '.join(bad)}; choose from {', '.join(FAULTS)}")
    if args.rate <= 0 or args.rate > 200:
        raise CliError(f"--rate {args.rate}: must be in (0, 200]")
    if args.duration < 1:
        raise CliError(f"--duration {args.duration}: must be at least 1 second")
    if not 1 <= args.max_tokens <= 512:
        raise CliError(f"--max-tokens {args.max_tokens}: must be in [1, 512]")
    if not 0 <= args.streams <= 64:
        raise CliError(f"--streams {args.streams}: must be in [0, 64]")
    if not 0.5 <= args.hold <= 600:
        raise CliError(f"--hold {args.hold}: must be in [0.5, 600] seconds")
    settings = DrillSettings(rate=args.rate, duration=args.duration, out=Path(args.out),
                             max_tokens=args.max_tokens, faults=faults, streams=args.streams,
                             hold=args.hold)
    system = None
    try:
        if args.platform == "knative":
            target = _knative_target(args)
        else:
            target, system = _local_target(args)
        drill = Drill(target, settings, progress=lambda m: print(m, flush=True))
        try:
            report = drill.run()
        except RuntimeError as exc:
            raise CliError(str(exc), code=EXIT_FAILED) from exc
        report_path, png = drill.write(settings.out)
    finally:
        if system is not None:
            print("stopping the drill's system...", flush=True)
            system.stop()
    print(format_report(report))
    print(f"\nreport: {report_path}\ntimeline: {png}")
    # a failed request, a broken stream or a lost remediation event fails the drill; the
    # timing targets are reported (a loaded machine misses them without a defect)
    lost = report.get("dead_letters", {}).get("count", 0)
    return 0 if report["continuity"]["pass"] and not lost else EXIT_FAILED


def _knative_target(args: argparse.Namespace) -> Any:
    from envreader import read_value
    from knative.platforms.kube import KnativePlatform, KubeSettings
    from surefoot._drill import Target

    if not args.gateway:
        raise CliError("--platform knative needs --gateway URL (the gateway's address)")
    try:
        kube = KubeSettings.from_env(os.environ)
        platform = KnativePlatform.from_settings(kube)
    except Exception as exc:  # no kubeconfig, bad context
        raise CliError(f"--platform knative: {exc}") from exc
    env = os.environ
    return Target(platform, kube.service, args.gateway,
                  read_value(env, "SUREFOOT_PRIMARY_REVISION", str, f"{kube.service}-v1"),
                  broker_url=read_value(env, "SUREFOOT_BROKER_URL", str, ""),
                  redis_url=read_value(env, "SUREFOOT_REDIS_URL", str, ""),
                  admin_token=read_value(env, "SUREFOOT_ADMIN_TOKEN", str, ""))


def _local_target(args: argparse.Namespace) -> tuple[Any, Any]:
    """The running `surefoot up` to attach to, or (with no --state-dir) a system of the drill's
    own, which the caller stops."""
    from knative.platforms.local import LocalPlatformClient
    from surefoot._drill import Target
    from surefoot._up import RunState, UpError, default_state_dir
    from surefoot._up_durable import dead_letter_path

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(os.environ)
    system = None
    try:
        st = RunState.read(state_dir)
        print(f"attaching to `surefoot up` (pid {st.pid}) at {st.gateway_url}", flush=True)
    except UpError:
        if args.state_dir:
            raise CliError(f"no running `surefoot up` with state in {state_dir}") from None
        system = _own_system(args)
        assert system.state is not None
        st = system.state
        state_dir = Path(system.state_dir)
    client = LocalPlatformClient(st.control_url)
    revs = {r["name"]: r for r in client.status().get("revisions", [])}
    serve_args = tuple(revs.get(st.primary_revision, {}).get("serve_args", ()))
    target = Target(client, st.service, st.gateway_url, st.primary_revision,
                    broker_url=st.broker_url, redis_url=st.redis_url, admin_token=st.admin_token,
                    serve_args=serve_args,
                    start_nice=int(client.status().get("start_nice", 0)),
                    control_url=st.control_url, fallback_revision=st.fallback_revision,
                    dead_letters=str(dead_letter_path(state_dir)))
    return target, system


def _own_system(args: argparse.Namespace) -> LocalSystem:
    """A whole local system for the drill alone, started and ready; stopped again when its
    start fails."""
    from surefoot._cmd_up import functions_factory
    from surefoot._up import LocalSystem, UpError, UpSettings

    tmp = tempfile.mkdtemp(prefix="surefoot-drill-")
    port = _free_port()
    print(f"starting a local system for the drill (gateway port {port}, state {tmp})...",
          flush=True)
    system = LocalSystem(UpSettings(port=port, state_dir=tmp,
                                    embeddings=args.embeddings,
                                    checkpoint_interval=0, gpu_source=False),
                         os.environ, functions_factory)
    try:
        system.start()
        if not system.wait_ready():
            raise CliError("the drill's system did not become ready", code=EXIT_FAILED)
    except UpError as exc:
        system.stop()
        raise CliError(str(exc), code=EXIT_FAILED if exc.failed else 2) from None
    except BaseException:  # Ctrl-C included: nothing of it is left running
        system.stop()
        raise
    return system

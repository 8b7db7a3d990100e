"""``surefoot source gpu|pods``, ``surefoot inject gpu-*`` and ``surefoot broker``.

Thin: parse flags (falling back to SUREFOOT_* variables), build the events package's settings,
run. Environment: SUREFOOT_BROKER_URL (default sink; without it, the broker of a running
``surefoot up``), SUREFOOT_NODE_NAME (default node).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any

from surefoot.cli import EXIT_FAILED, EXIT_OK, CliError

ENV_SINK = "SUREFOOT_BROKER_URL"
ENV_NODE = "SUREFOOT_NODE_NAME"


def register(subparsers: Any) -> None:
    src = subparsers.add_parser("source", help="run an event source (gpu, pods)")
    src_sub = src.add_subparsers(dest="source", metavar="SOURCE")
    src_sub.required = True
    _register_gpu_source(src_sub)
    _register_pods_source(src_sub)
    _register_inject(subparsers)
    _register_broker(subparsers)


def _register_gpu_source(src_sub: Any) -> None:
    gpu = src_sub.add_parser(
        "gpu", help="GPU health (NVML + kernel log) -> gpu.* events",
        description="Watch the node's GPUs and send gpu.* CloudEvents to a sink. "
        "--check reads every GPU once and exits: 0 ok, 1 a GPU is lost or NVML fails, "
        "3 no NVIDIA driver.",
    )
    gpu.add_argument("--node", help=f"node name (default ${ENV_NODE} or the host name)")
    gpu.add_argument("--sink", help=f"where events go (default ${ENV_SINK})")
    gpu.add_argument("--check", action="store_true", help="read every GPU once and exit")
    gpu.add_argument("--poll-interval", type=float, default=5.0, metavar="S")
    gpu.add_argument("--nvml-deadline", type=float, default=2.0, metavar="S",
                     help="give up on an NVML call after S seconds")
    gpu.add_argument("--kernel-log", default="auto",
                     help="auto, off, /dev/kmsg, journal, or a log file to follow")
    gpu.add_argument("--health-host", default="0.0.0.0")
    gpu.add_argument("--health-port", type=int, default=8090)
    gpu.add_argument("--escalate-after", type=int, default=3, metavar="N")
    gpu.add_argument("--rate-limit", type=float, default=60.0, metavar="S")
    gpu.add_argument("--dead-letter", metavar="PATH|URL",
                     help="where undeliverable events go (JSON lines file or URL)")
    gpu.set_defaults(func=run_gpu_source)


def _register_pods_source(src_sub: Any) -> None:
    pods = src_sub.add_parser(
        "pods", help="pod and node lifecycle (Kubernetes watch) -> pod.* / node.* events",
        description="Watch pods (by label selector) and nodes; send pod.* and node.* events.",
    )
    pods.add_argument("--sink", help=f"where events go (default ${ENV_SINK})")
    pods.add_argument("--namespace", help="namespace to watch (default: all)")
    pods.add_argument("--selector", default="", help="pod label selector")
    pods.add_argument("--no-nodes", action="store_true", help="do not watch nodes")
    pods.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    pods.add_argument("--context", help="kubeconfig context")
    pods.add_argument("--sweep-interval", type=float, default=60.0, metavar="S")
    pods.add_argument("--health-host", default="0.0.0.0")
    pods.add_argument("--health-port", type=int, default=8091)
    pods.add_argument("--dead-letter", metavar="PATH|URL")
    pods.set_defaults(func=run_pods_source)


def _register_inject(subparsers: Any) -> None:
    inj = subparsers.add_parser("inject", help="inject a GPU fault event (for drills)")
    inj_sub = inj.add_subparsers(dest="fault", metavar="FAULT")
    inj_sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", required=True)
    common.add_argument("--gpu", type=int, default=0)
    common.add_argument("--uuid")
    common.add_argument("--pci", help="PCI bus id, e.g. 00000000:3B:00.0")
    common.add_argument("--sink", help=f"where the event goes (default ${ENV_SINK})")
    x = inj_sub.add_parser("gpu-xid", parents=[common], help="an XID error")
    x.add_argument("--xid", type=int, required=True)
    x.add_argument("--message", default="")
    x.add_argument("--repeats", type=int, default=1, help="occurrences in the window (escalation)")
    x.set_defaults(func=run_inject)
    e = inj_sub.add_parser("gpu-ecc", parents=[common], help="uncorrected ECC / row remap")
    e.add_argument("--uncorrected", type=int, default=1)
    e.add_argument("--remap-pending", action="store_true")
    e.add_argument("--remap-failure", action="store_true")
    e.set_defaults(func=run_inject)
    t = inj_sub.add_parser("gpu-thermal", parents=[common], help="thermal slowdown")
    t.add_argument("--temperature", type=int, default=95)
    t.add_argument("--reason", action="append", default=None,
                   help="hw_thermal (default), sw_thermal, hw_slowdown, hw_power_brake")
    t.set_defaults(func=run_inject)
    lost = inj_sub.add_parser("gpu-lost", parents=[common], help="GPU fell off the bus")
    lost.add_argument("--reason", default="NVML_ERROR_GPU_IS_LOST")
    lost.set_defaults(func=run_inject)


def _register_broker(subparsers: Any) -> None:
    br = subparsers.add_parser(
        "broker", help="run the local event broker",
        description="An HTTP CloudEvents broker: POST events to /, triggers from --config "
        "(Knative Trigger style) fan them out with retries and a dead letter.",
    )
    br.add_argument("--host", default="127.0.0.1")
    br.add_argument("--port", type=int, default=8070)
    br.add_argument("--config", metavar="TRIGGERS.yaml", help="triggers file")
    br.add_argument("--dead-letter", metavar="PATH|URL", help="broker-wide dead letter")
    br.add_argument("--retries", type=int, default=4)
    br.add_argument("--timeout", type=float, default=5.0, metavar="S")
    br.add_argument("--workers", type=int, default=8)
    br.set_defaults(func=run_broker)


def _running_up_broker(env: Mapping[str, str]) -> str | None:
    """The broker of a running ``surefoot up`` on this machine, if there is one."""
    try:
        from surefoot._up import RunState, UpError, default_state_dir
    except ImportError:
        return None
    try:
        return RunState.read(default_state_dir(env)).broker_url or None
    except (UpError, OSError, TypeError, ValueError):
        return None


def _sink(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    sink = args.sink or env.get(ENV_SINK) or _running_up_broker(env)
    if not sink:
        raise CliError(f"no event sink: pass --sink URL, set {ENV_SINK}, or start `surefoot up`")
    if not sink.startswith(("http://", "https://")):
        raise CliError(f"--sink must be an http(s) URL, got {sink!r}")
    return sink


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise CliError(f"{name} must be > 0, got {value}")


def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    done = threading.Event()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_gpu_source(args: argparse.Namespace) -> int:
    import events as ev

    env = os.environ
    node = args.node or env.get(ENV_NODE) or socket.gethostname()
    _positive("--poll-interval", args.poll_interval)
    _positive("--nvml-deadline", args.nvml_deadline)
    if args.escalate_after < 1:
        raise CliError("--escalate-after must be >= 1")
    if args.check:
        code, lines = ev.check(ev.NvmlProbe(deadline_s=args.nvml_deadline))
        for line in lines:
            print(line, file=sys.stdout if code == ev.CHECK_OK else sys.stderr)
        return code
    sink = _sink(args, env)
    kernel = args.kernel_log
    if kernel not in ("auto", "off", "journal") and not kernel.startswith("/dev/") \
            and not os.path.exists(kernel):
        raise CliError(f"--kernel-log {kernel!r}: no such file (use auto, off, journal, "
                       "/dev/kmsg or a log file)")
    settings = ev.GpuSourceSettings(
        node=node, sink=sink, poll_interval_s=args.poll_interval,
        nvml_deadline_s=args.nvml_deadline, escalate_after=args.escalate_after,
        rate_limit_s=args.rate_limit, kernel_log=kernel, health_host=args.health_host,
        health_port=args.health_port,
    )
    sender = ev.Sender(ev.SenderSettings(dead_letter=args.dead_letter))
    publisher = ev.Publisher(sender, sink)
    service = ev.GpuSourceService(settings, emit=publisher,
                                  kernel_lines=ev.kernel_log_source(kernel))
    try:
        service.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.health_host}:{args.health_port}: "
                       f"{exc.strerror}") from None
    print(f"GPU source on node {node}: {service.source.state}"
          f"{' (' + service.source.reason + ')' if service.source.reason else ''}; "
          f"events -> {sink}; health {service.health_url}/healthz", flush=True)
    try:
        _wait_for_signal()
    finally:
        service.stop()
        publisher.close()
        sender.close()
    return EXIT_OK


def run_pods_source(args: argparse.Namespace) -> int:
    import events as ev

    sink = _sink(args, os.environ)
    _positive("--sweep-interval", args.sweep_interval)
    settings = ev.PodSourceSettings(
        namespace=args.namespace, selector=args.selector, watch_nodes=not args.no_nodes,
        sweep_interval_s=args.sweep_interval, health_host=args.health_host,
        health_port=args.health_port,
    )
    try:
        api = ev.kube_client(kubeconfig=args.kubeconfig, context=args.context)
    except ev.ConfigError as exc:
        raise CliError(str(exc)) from None
    sender = ev.Sender(ev.SenderSettings(dead_letter=args.dead_letter))
    publisher = ev.Publisher(sender, sink)
    service = ev.PodSourceService(settings, api=api, emit=publisher)
    try:
        service.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.health_host}:{args.health_port}: "
                       f"{exc.strerror}") from None
    print(f"pod source watching {args.namespace or 'all namespaces'} "
          f"(selector {args.selector!r}); events -> {sink}; health {service.health_url}/healthz",
          flush=True)
    try:
        _wait_for_signal()
    finally:
        service.stop()
        publisher.close()
        sender.close()
    return EXIT_OK


def build_injected_event(args: argparse.Namespace) -> Any:
    """The event the GPU source would emit for this fault (same builders)."""
    import events as ev

    if args.gpu < 0:
        raise CliError(f"--gpu must be >= 0, got {args.gpu}")
    settings = ev.GpuSourceSettings(node=args.node)
    gpu = ev.GpuInfo(index=args.gpu, uuid=args.uuid, pci_bus_id=args.pci)
    detector = ev.DETECTOR_INJECT
    if args.fault == "gpu-xid":
        if args.xid < 0:
            raise CliError(f"--xid must be >= 0, got {args.xid}")
        if args.repeats < 1:
            raise CliError("--repeats must be >= 1")
        return ev.xid_event(settings, gpu, args.xid, message=args.message, detector=detector,
                            repeats=args.repeats)
    if args.fault == "gpu-ecc":
        if args.uncorrected < 0:
            raise CliError("--uncorrected must be >= 0")
        reading = ev.GpuReading(index=args.gpu, ecc_volatile_uncorrected=args.uncorrected,
                                remapped_rows_pending=args.remap_pending or None,
                                remapped_rows_failure=args.remap_failure or None)
        return ev.ecc_event(settings, gpu, reading, new_uncorrected=args.uncorrected > 0,
                            detector=detector)
    if args.fault == "gpu-thermal":
        reasons = args.reason or ["hw_thermal"]
        bad = [r for r in reasons if r not in ev.THERMAL_REASONS and r != "temperature"]
        if bad:
            raise CliError(f"--reason {bad[0]!r} is not one of "
                           f"{', '.join(sorted(ev.THERMAL_REASONS))}, temperature")
        return ev.thermal_event(settings, gpu, sorted(reasons), args.temperature,
                                detector=detector)
    return ev.lost_event(settings, gpu, args.reason, detector=detector)


def run_inject(args: argparse.Namespace) -> int:
    import events as ev

    sink = _sink(args, os.environ)
    event = build_injected_event(args)
    with ev.Sender(ev.SenderSettings(retry=ev.RetryPolicy(retries=2))) as sender:
        result = sender.send(event, sink)
    if not result.ok:
        print(f"surefoot inject: {event.type} not delivered to {sink}: {result.error}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{event.type} id={event.id} subject={event.subject} -> {sink} (HTTP {result.status})")
    return EXIT_OK


def run_broker(args: argparse.Namespace) -> int:
    import events as ev

    triggers: list[Any] = []
    if args.config:
        try:
            triggers = ev.load_triggers(args.config)
        except ev.ConfigError as exc:
            raise CliError(f"{args.config}: {exc}") from None
    if args.retries < 0:
        raise CliError("--retries must be >= 0")
    _positive("--timeout", args.timeout)
    if args.workers < 1:
        raise CliError("--workers must be >= 1")
    settings = ev.BrokerSettings(
        host=args.host, port=args.port, workers=args.workers,
        sender=ev.SenderSettings(timeout_s=args.timeout, dead_letter=args.dead_letter,
                                 retry=ev.RetryPolicy(retries=args.retries)),
    )
    try:
        server = ev.BrokerServer(settings, triggers=triggers)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    server.start()
    print(f"broker on {server.url} with {len(triggers)} trigger(s)", flush=True)
    try:
        _wait_for_signal()
    finally:
        server.stop()
    return EXIT_OK

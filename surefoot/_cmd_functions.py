"""``surefoot functions`` (the functions host) and ``surefoot release NODE``.

Thin: flags and ``SUREFOOT_*`` variables make the settings; the functions package does the work.
``surefoot release`` asks a running host (``--url`` / ``SUREFOOT_FUNCTIONS_URL``, e.g. the one
``surefoot up`` runs) or, without a URL, acts on the cluster directly (Knative platform).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import threading
from typing import Any

from surefoot.cli import EXIT_FAILED, EXIT_OK, CliError

ENV_URL = "SUREFOOT_FUNCTIONS_URL"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "functions",
        help="serve the functions (trip_breaker, reroute_traffic, snapshot_checkpoint, "
             "quarantine_node) over HTTP",
        description=(
            "Serve every function at its own path (POST /trip_breaker, ...) and POST / "
            "dispatching by event type; replies are CloudEvents in the response (Knative's "
            "reply pattern). Settings come from SUREFOOT_<FIELD> variables (SUREFOOT_SERVICE, "
            "SUREFOOT_PRIMARY_REVISION, SUREFOOT_MAX_QUARANTINED, ...; see docs/functions.md), "
            "then these flags."
        ),
    )
    p.add_argument("--host", default=os.environ.get("SUREFOOT_FUNCTIONS_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int,
                   help="default $PORT (Knative), else $SUREFOOT_PORT, else 8080")
    p.add_argument("--platform", choices=("knative", "local"),
                   help="where the functions act (default $SUREFOOT_PLATFORM or knative)")
    p.add_argument("--service", help="the Knative Service (default $SUREFOOT_SERVICE)")
    p.add_argument("--namespace", help="default $SUREFOOT_NAMESPACE")
    p.add_argument("--redis-url", help="the shared Redis (default $SUREFOOT_REDIS_URL)")
    p.add_argument("--sink", help="where extra events go, e.g. the broker (default $SUREFOOT_SINK)")
    p.add_argument("--only", choices=("trip_breaker", "reroute_traffic", "snapshot_checkpoint",
                                      "quarantine_node"),
                   help="serve one function alone (default $SUREFOOT_ONLY_FUNCTION)")
    p.add_argument("--dry-run", action="store_const", const=True,
                   help="report what quarantine_node would do, change no node")
    p.set_defaults(func=run_functions)

    r = subparsers.add_parser(
        "release",
        help="release a quarantined node (uncordon, remove the gpu-error label)",
        description=(
            "Release NODE now, without waiting for gpu.healthy and the hold time. With --url "
            f"(or ${ENV_URL}) a running functions host does it (bearer $SUREFOOT_ADMIN_TOKEN); "
            "without, the node is released on the cluster directly (needs the kubeconfig and "
            "SUREFOOT_REDIS_URL)."
        ),
    )
    r.add_argument("node", metavar="NODE")
    r.add_argument("--url", default=os.environ.get(ENV_URL), help="a running functions host")
    r.add_argument("--reason", default="released by an operator")
    r.add_argument("--timeout", type=float, default=130.0, metavar="S")
    r.set_defaults(func=run_release)


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    for name in ("PORT", "SUREFOOT_PORT"):
        raw = os.environ.get(name)
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise CliError(f"{name}: {raw!r} is not a port number") from None
    return 8080


def _check_port(host: str, port: int) -> None:
    if not 0 <= port < 65536:
        raise CliError(f"--port {port}: not a TCP port")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"--port {port}: already in use on {host}; pick another") from None
            raise CliError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None


def _settings(args: argparse.Namespace) -> Any:
    from functions import FunctionSettings, SettingsError

    overrides = {
        "platform": getattr(args, "platform", None),
        "service": getattr(args, "service", None),
        "namespace": getattr(args, "namespace", None),
        "redis_url": getattr(args, "redis_url", None),
        "sink": getattr(args, "sink", None),
        "only_function": getattr(args, "only", None),
        "dry_run": getattr(args, "dry_run", None),
    }
    try:
        return FunctionSettings.from_env(os.environ, **overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


def _context(settings: Any) -> Any:
    """Platform, Redis, breakers and sink for a process of its own (the Knative platform)."""
    from events import Publisher, Sender, SenderSettings
    from functions import KServeCanary, build_context
    from knative import PlatformError
    from knative.breakers import (
        BreakerRegistrySettings,
        InvalidBreakerSettings,
        check_credentials,
        redacted,
    )
    from knative.platforms.kube import KnativePlatform, KubeSettings, KubeSettingsError

    if settings.platform == "local":
        raise CliError(
            "--platform local: the local platform runs inside `surefoot up`, which hosts the "
            "functions itself; use --platform knative here")
    if not settings.redis_url:
        raise CliError("set SUREFOOT_REDIS_URL (or --redis-url): the functions share Redis "
                       "with the gateways")
    try:
        breakers = BreakerRegistrySettings.from_env(os.environ, redis_url=settings.redis_url)
        kube = KubeSettings.from_env(os.environ, namespace=settings.namespace,
                                     service=settings.service)
        platform = KnativePlatform.from_settings(kube)
    except (InvalidBreakerSettings, KubeSettingsError) as exc:
        raise CliError(str(exc)) from exc
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    sink = None
    if settings.sink:
        sink = Publisher(Sender(SenderSettings()), settings.sink)
    canary = KServeCanary(platform.api_client, platform.namespace) if settings.kserve_isvc else None
    ctx = build_context(settings, platform, breaker_settings=breakers, sink=sink, canary=canary)
    try:
        check_credentials(settings.redis_url)
    except InvalidBreakerSettings as exc:
        raise CliError(str(exc)) from None
    try:
        ctx.redis.ping()
    except Exception as exc:  # redis errors, DNS
        raise CliError(f"Redis at {redacted(settings.redis_url)} does not answer: {exc}",
                       code=EXIT_FAILED) from exc
    return ctx


def run_functions(args: argparse.Namespace) -> int:
    from functions import FunctionsServer

    settings = _settings(args)
    port = _port(args)
    _check_port(args.host, port)
    ctx = _context(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = FunctionsServer(settings, ctx, host=args.host, port=port).start()
    durable = threading.Thread(target=_keep_forced_breakers, args=(settings, ctx, stop),
                               name="durable-breakers", daemon=True)
    durable.start()
    print(f"surefoot functions on {server.url} (service {settings.service}, namespace "
          f"{settings.namespace}{', dry run' if settings.dry_run else ''})", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        sink = ctx.sink
        if sink is not None and hasattr(sink, "close"):
            sink.close()
        ctx.close()
    return EXIT_OK


def forced_breakers_configmap(service: str) -> str:
    """The ConfigMap that keeps the operator's forced breakers of ``service`` on a cluster."""
    return f"{service}-forced-breakers"


def _keep_forced_breakers(settings: Any, ctx: Any, stop: threading.Event,
                          interval: float = 1.0) -> None:
    """Mirror the forced breakers into their ConfigMap, and write them back into a Redis found
    empty, every ``interval`` seconds until ``stop``."""
    import logging

    from knative import PlatformError
    from knative.breakers import BreakerRegistrySettings, DurableBreakers
    from knative.platforms.kube import ConfigMapHome

    log = logging.getLogger("surefoot.functions")
    home = ConfigMapHome(ctx.platform.api_client, settings.namespace,
                         forced_breakers_configmap(settings.service))
    durable = DurableBreakers(home, BreakerRegistrySettings.from_env(
        os.environ, redis_url=settings.redis_url))
    try:
        while not stop.wait(interval):
            try:
                durable.sync()
            except PlatformError as exc:  # the API server away: the next pass tries again
                log.warning("forced breakers not synced with %s: %s", home.describe(), exc)
    finally:
        durable.close()


def run_release(args: argparse.Namespace) -> int:
    node = str(args.node).strip()
    if not node:
        raise CliError("NODE: give the node's name")
    if args.url:
        return _release_remote(args.url, node, args.reason, args.timeout)
    if not os.environ.get("SUREFOOT_REDIS_URL") and not getattr(args, "redis_url", None):
        # on one machine: the functions host of a running `surefoot up`
        from surefoot._up import RunState, UpError, default_state_dir

        try:
            st = RunState.read(default_state_dir(os.environ))
        except UpError:
            st = None
        if st is not None and st.functions_url:
            return _release_remote(st.functions_url, node, args.reason, args.timeout,
                                   st.admin_token)
    from functions import FunctionError, PermanentFunctionError, quarantine_node

    settings = _settings(args)
    ctx = _context(settings)
    try:
        out = quarantine_node.release(ctx, node, reason=args.reason)
    except PermanentFunctionError as exc:
        raise CliError(str(exc)) from exc
    except FunctionError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    finally:
        ctx.close()
    print(f"{node}: {out.status}: {out.reason}")
    return EXIT_OK


def _release_remote(url: str, node: str, reason: str, timeout: float,
                    token: str | None = None) -> int:
    import httpx

    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url {url!r}: expected an http(s) URL")
    token = token if token is not None else os.environ.get("SUREFOOT_ADMIN_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{url.rstrip('/')}/admin/release", json={"node": node, "reason": reason},
                       headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the functions host at {url}: {exc}",
                       code=EXIT_FAILED) from exc
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text[:200]}
    if r.status_code == 200:
        print(f"{node}: {body.get('status')}: {body.get('reason')}")
        return EXIT_OK
    message = str(body.get("error") or f"HTTP {r.status_code}")
    if r.status_code in (401, 403):
        raise CliError(f"{message} (set SUREFOOT_ADMIN_TOKEN to the host's admin token)")
    if r.status_code in (400, 404, 422):
        raise CliError(message)
    raise CliError(f"the functions host failed: {message}", code=EXIT_FAILED)

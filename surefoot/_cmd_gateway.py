"""``surefoot gateway``: the OpenAI API in front of the revisions, with the shared breakers."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from surefoot.cli import CliError

if TYPE_CHECKING:
    from knative.breakers import BreakerRegistrySettings, EmbeddedRedis
    from knative.gateway import GatewayServerSettings, GatewaySettings, Resolver


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="serve the OpenAI API in front of the revisions (breakers, retries, fallback)",
        description=(
            "Route /v1/* to the revisions by weight, skipping replicas, nodes and revisions whose "
            "breaker is open; retry safely within a budget; fall back to the fallback revision. "
            "Settings also read SUREFOOT_GATEWAY_<NAME> (e.g. SUREFOOT_GATEWAY_DEADLINE); the "
            "admin token only from SUREFOOT_GATEWAY_ADMIN_TOKEN; breaker policy from "
            "SUREFOOT_BREAKER_<NAME>; Redis from SUREFOOT_REDIS_URL (else an embedded one)."
        ),
    )
    p.add_argument("--host", default=os.environ.get("SUREFOOT_GATEWAY_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, help="default 8080 (SUREFOOT_GATEWAY_PORT)")
    p.add_argument("--workers", type=int,
                   help="gateway processes, each with its own breaker view (default 1)")
    p.add_argument("--threads", type=int,
                   help="threads per process; bounds concurrent streams (default 64)")
    p.add_argument("--target", action="append", default=[], metavar="REV=PCT=URL[,URL...]",
                   help="a revision, its traffic percent and its replica URLs (repeatable)")
    p.add_argument("--fallback", metavar="REV=URL[,URL...]",
                   help="the fallback revision and its replica URLs")
    p.add_argument("--platform", choices=("knative", "local"),
                   help="resolve targets from the platform instead of --target")
    p.add_argument("--control-url", default=os.environ.get("SUREFOOT_CONTROL_URL"),
                   help="with --platform local: the control API of `surefoot up`")
    p.add_argument("--service", help="the Knative Service to front (with --platform)")
    p.add_argument("--fallback-revision",
                   help="with --platform: the fallback revision (default: the one tagged fallback)")
    p.add_argument("--refresh-interval", type=float, default=1.0,
                   help="with --platform: seconds between re-reads of replicas and traffic")
    p.add_argument("--redis-url", help="default SUREFOOT_REDIS_URL; unset: an embedded Redis")
    p.add_argument("--no-breakers", action="store_true", help="route without breakers")
    p.add_argument("--events-sink", default=os.environ.get("SUREFOOT_BREAKER_EVENTS_SINK"),
                   help="URL that breaker transitions are POSTed to as CloudEvents")
    p.add_argument("--try-timeout", type=float)
    p.add_argument("--connect-timeout", type=float)
    p.add_argument("--deadline", type=float)
    p.add_argument("--stream-idle-timeout", type=float)
    p.add_argument("--max-tries", type=int)
    p.add_argument("--retry-budget-ratio", type=float)
    p.add_argument("--retry-budget-min", type=int)
    p.add_argument("--pool-size", type=int, help="connections per replica per process")
    p.add_argument("--own-port", type=int, default=0,
                   help="also listen on this port, this process's alone (to read its own "
                        "/metrics when gateways share --port)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the port with other gateways started with --reuse-port "
                        "(SO_REUSEPORT): one that dies leaves the others answering")
    p.set_defaults(func=run)


def _env_int(name: str, default: int) -> int:
    from envreader import EnvError, read_value

    try:
        return int(read_value(os.environ, name, int, default))
    except EnvError as exc:
        raise CliError(str(exc)) from None


def _check_port_free(host: str, port: int, reuse_port: bool = False) -> None:
    """Refuse a port another program holds; with ``reuse_port``, one held by gateways that
    share it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"--port {port}: already in use on {host}; pick another") from None
            raise CliError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None


def _settings(args: argparse.Namespace) -> tuple[GatewaySettings, GatewayServerSettings]:
    """The gateway's settings from the environment and the flags."""
    from knative.gateway import GatewayServerSettings, GatewaySettings, GatewaySettingsError

    try:
        settings = GatewaySettings.from_env(
            os.environ,
            try_timeout=args.try_timeout, connect_timeout=args.connect_timeout,
            deadline=args.deadline, stream_idle_timeout=args.stream_idle_timeout,
            max_tries=args.max_tries, retry_budget_ratio=args.retry_budget_ratio,
            retry_budget_min=args.retry_budget_min, pool_size=args.pool_size,
        )
        server = GatewayServerSettings(
            host=args.host,
            port=args.port if args.port is not None else _env_int("SUREFOOT_GATEWAY_PORT", 8080),
            workers=args.workers if args.workers is not None
            else _env_int("SUREFOOT_GATEWAY_WORKERS", 1),
            threads=args.threads if args.threads is not None
            else _env_int("SUREFOOT_GATEWAY_THREADS", 64),
            log_level=str(args.log_level).lower(),
            reuse_port=bool(getattr(args, "reuse_port", False)),
            own_port=int(getattr(args, "own_port", 0) or 0),
        )
    except (GatewaySettingsError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.events_sink and not args.events_sink.startswith(("http://", "https://")):
        raise CliError(f"--events-sink {args.events_sink!r}: expected an http(s) URL")
    return settings, server


def _knative_resolver(args: argparse.Namespace) -> Callable[[], Resolver]:
    from knative.gateway import PlatformResolver
    from knative.platforms.kube import KnativePlatform, KubeSettings

    if not args.service:
        raise CliError("--platform knative needs --service NAME")
    try:
        kube = KubeSettings.from_env(os.environ, service=args.service)
        KnativePlatform.from_settings(kube)  # fail here, not in every worker
    except Exception as exc:  # no kubeconfig, bad context, bad settings
        raise CliError(f"--platform knative: {exc}") from exc
    service, fb_rev, interval = args.service, args.fallback_revision, args.refresh_interval

    def resolver_factory() -> Resolver:
        return PlatformResolver(KnativePlatform.from_settings(kube), service, fb_rev, interval)

    return resolver_factory


def _local_resolver(args: argparse.Namespace) -> Callable[[], Resolver]:
    from knative.gateway import PlatformResolver
    from knative.platforms.local import LocalPlatformClient

    if not args.service or not args.control_url:
        raise CliError("--platform local needs --service NAME and --control-url URL")
    service, fb_rev, interval = args.service, args.fallback_revision, args.refresh_interval
    control = args.control_url

    def resolver_factory() -> Resolver:
        return PlatformResolver(LocalPlatformClient(control), service, fb_rev, interval)

    return resolver_factory


def _resolver_factory(args: argparse.Namespace) -> Callable[[], Resolver]:
    """How each worker builds its routing table: from the platform, or from the flags."""
    from knative.gateway import RoutingSpecError, StaticResolver, static_table

    if args.platform is not None and args.target:
        raise CliError("--target and --platform are exclusive; use one")
    if args.platform == "knative":
        return _knative_resolver(args)
    if args.platform == "local":
        return _local_resolver(args)
    try:
        table = static_table(args.target, args.fallback)
    except RoutingSpecError as exc:
        raise CliError(str(exc)) from exc

    def resolver_factory() -> Resolver:
        return StaticResolver(table)

    return resolver_factory


def _breakers(
    args: argparse.Namespace,
) -> tuple[BreakerRegistrySettings | None, EmbeddedRedis | None]:
    """The breaker settings (None with --no-breakers) and the embedded Redis started for
    them when no Redis URL is given."""
    from knative.breakers import (
        BreakerRegistrySettings,
        EmbeddedRedis,
        InvalidBreakerSettings,
        RedisStartError,
        check_credentials,
    )

    if args.no_breakers:
        return None, None
    embedded = None
    url = args.redis_url or os.environ.get("SUREFOOT_REDIS_URL")
    if not url:
        try:
            embedded = EmbeddedRedis().start()
        except RedisStartError as exc:
            raise CliError(f"embedded redis: {exc}; or set SUREFOOT_REDIS_URL") from exc
        url = embedded.url
    try:
        settings = BreakerRegistrySettings.from_env(os.environ, redis_url=url)
        check_credentials(settings.redis_url)
        return settings, embedded
    except InvalidBreakerSettings as exc:
        if embedded:
            embedded.stop()
        raise CliError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from knative.gateway import serve

    settings, server = _settings(args)
    resolver_factory = _resolver_factory(args)
    _check_port_free(server.host, server.port, server.reuse_port)
    breakers, embedded = _breakers(args)
    try:
        return serve(settings, server, resolver_factory, breakers, args.events_sink)
    finally:
        if embedded is not None:
            embedded.stop()

"""Runs the gateway under gunicorn (gthread workers).

Each worker builds its own resolver, breaker registry (with its subscription thread) and
connection pool after the fork, so no thread or socket crosses a fork; on exit a worker flushes
its queued breaker results. Streams hold a worker thread for their whole length, so ``threads``
bounds the concurrent streams of a worker; idle keep-alive client connections do not hold one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from knative.breakers import BreakerRegistry, BreakerRegistrySettings, CloudEventSink
from knative.gateway._app import create_app, gateway_of
from knative.gateway._routing import Resolver
from knative.gateway._settings import GatewaySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    threads: int = 64
    keepalive: int = 75  # seconds an idle client connection stays open
    graceful_timeout: int = 30
    log_level: str = "info"
    # SO_REUSEPORT: several gateway processes listen on one port, so one that dies leaves the
    # others answering while it is restarted
    reuse_port: bool = False
    # a port of this process alone besides the shared one (0: none), so that each gateway's
    # own /metrics and /admin can be read when several share ``port``
    own_port: int = 0

    def __post_init__(self) -> None:
        errors = []
        if not 0 < self.port < 65536:
            errors.append(f"port: {self.port} is not a TCP port")
        if not 0 <= self.own_port < 65536 or (self.own_port and self.own_port == self.port):
            errors.append(f"own_port: {self.own_port} is not a TCP port other than port")
        if not 1 <= self.workers <= 64:
            errors.append(f"workers: {self.workers} is not within 1..64")
        if not 1 <= self.threads <= 4096:
            errors.append(f"threads: {self.threads} is not within 1..4096")
        if self.keepalive < 0 or self.graceful_timeout < 0:
            errors.append("keepalive, graceful_timeout: must not be negative")
        if errors:
            raise ValueError("; ".join(errors))


class _GatewayServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self,
        settings: GatewaySettings,
        server: GatewayServerSettings,
        resolver_factory: Callable[[], Resolver],
        breakers: BreakerRegistrySettings | None,
        events_sink: str | None,
    ) -> None:
        self.settings = settings
        self.server = server
        self.resolver_factory = resolver_factory
        self.breakers = breakers
        self.events_sink = events_sink
        super().__init__()

    def load_config(self) -> None:
        s = self.server
        cfg = {
            "bind": [f"{s.host}:{s.port}", *([f"{s.host}:{s.own_port}"] if s.own_port else [])],
            "workers": s.workers,
            "worker_class": "gthread",
            "threads": s.threads,
            "worker_connections": 4 * s.threads,
            "backlog": 1024,
            "reuse_port": s.reuse_port,
            "keepalive": s.keepalive,
            "timeout": 30,
            "graceful_timeout": s.graceful_timeout,
            "accesslog": None,
            "control_socket_disable": True,
            "loglevel": s.log_level.lower(),
            "worker_exit": _worker_exit,
            "post_fork": _die_with_master,
            "when_ready": self._when_ready,
            "proc_name": f"surefoot-gateway :{s.port}",
        }
        for key, value in cfg.items():
            self.cfg.set(key, value)

    def _when_ready(self, arbiter: Any) -> None:
        log.info("gateway listening on http://%s:%d (%d workers x %d threads)",
                 self.server.host, self.server.port, self.server.workers, self.server.threads)

    def load(self) -> Flask:
        return build_app(self.settings, self.resolver_factory(), self.breakers, self.events_sink)


def _die_with_master(arbiter: Any, worker: Any) -> None:
    """A worker is killed by the kernel the moment its master dies (Linux): an orphan would
    keep the listening socket open and take connections it never answers, while the other
    gateways on a shared port could have served them."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker notices its new parent itself
        pass


def build_app(
    settings: GatewaySettings,
    resolver: Resolver,
    breakers: BreakerRegistrySettings | None,
    events_sink: str | None = None,
) -> Flask:
    """The app one gateway process serves, with its registry started."""
    sink = CloudEventSink(events_sink, source="/surefoot/gateway") if events_sink else None
    registry = BreakerRegistry(breakers, sink) if breakers is not None else None
    if registry is not None and not registry.wait_ready(2.0):
        log.warning("breakers: no first read from redis yet; starting with an empty view")
    return create_app(settings, resolver, registry)


def close_app(app: Flask) -> None:
    """Flush and stop what :func:`build_app` started."""
    gw = gateway_of(app)
    if gw.breakers is not None:
        sink = gw.breakers.store.on_transition
        gw.breakers.close()
        if isinstance(sink, CloudEventSink):
            sink.close(2.0)
    gw.resolver.close()
    gw.close()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        try:
            close_app(app)
        except Exception:  # exiting anyway
            log.exception("gateway worker cleanup failed")


def serve(
    settings: GatewaySettings,
    server: GatewayServerSettings,
    resolver_factory: Callable[[], Resolver],
    breakers: BreakerRegistrySettings | None,
    events_sink: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    _GatewayServer(settings, server, resolver_factory, breakers, events_sink).run()
    return 0

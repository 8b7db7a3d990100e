"""The wiring of ``surefoot up``: the whole system on one machine, from settings.

Embedded Redis; the local platform with the primary revision (3 replicas under anti-affinity on
4 simulated nodes) and the fallback revision; the control API; the gateway as its own process;
the local broker and its triggers; the functions host; the GPU health source; the checkpoint
timer. A state file tells ``surefoot status|kill|evict|inject|drill`` where everything is.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from events import (
    KNATIVE_PING,
    BrokerServer,
    BrokerSettings,
    Event,
    GpuSourceService,
    GpuSourceSettings,
    Publisher,
    Sender,
    SenderSettings,
)
from events._http import HttpServer
from knative import Target
from knative.breakers import EmbeddedRedis
from knative.platforms.local import LocalPlatform, LocalSettings, RevisionSpec, create_control_app

log = logging.getLogger(__name__)


class UpError(Exception):
    """``surefoot up`` cannot start; the message says what to fix."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "surefoot" / "run"


@dataclass(frozen=True)
class UpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    service: str = "surefoot"
    nodes: int = 4
    primary_replicas: int = 3
    fallback_replicas: int = 1
    model: str = "gemma-3-270m"
    fallback_model: str = "gemma-3-270m"
    embeddings: bool = True
    n_ctx: int = 2048
    fallback_n_ctx: int = 1024
    max_tokens: int = 512
    grace_seconds: float = 10.0
    checkpoint_interval: float = 300.0
    redis_url: str = ""  # "" runs an embedded Redis
    state_dir: str = ""
    admin_token: str = ""
    gpu_source: bool = True
    replica_threads: int = 0  # 0: this machine's cores shared out among the replicas
    ready_timeout: float = 180.0

    @property
    def primary_revision(self) -> str:
        return f"{self.service}-primary"

    @property
    def fallback_revision(self) -> str:
        return f"{self.service}-fallback"


@dataclass
class RunState:
    """What ``surefoot up`` writes for the other commands (``state.json``)."""

    pid: int
    service: str
    gateway_url: str
    control_url: str
    broker_url: str
    functions_url: str
    redis_url: str
    checkpoint_dir: str
    log_dir: str
    admin_token: str
    primary_revision: str
    fallback_revision: str
    started: float = field(default_factory=time.time)

    def write(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, state_dir: Path) -> RunState:
        path = state_dir / "state.json"
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
        except FileNotFoundError:
            raise UpError(f"no running `surefoot up` found ({path} does not exist)") from None
        except (ValueError, TypeError) as exc:
            raise UpError(f"{path} is not a state file of surefoot up: {exc}") from exc
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            raise UpError(
                f"`surefoot up` (pid {state.pid}) is no longer running; start it again") from None
        except PermissionError:
            pass
        return state


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class LocalSystem:
    """Starts and stops every component; ``stop`` leaves no process behind."""

    def __init__(self, settings: UpSettings,
                 functions_factory: Callable[[LocalSystem], Any | None] | None = None) -> None:
        self.s = settings
        self.state_dir = Path(settings.state_dir or default_state_dir())
        self.admin_token = settings.admin_token or secrets.token_urlsafe(16)
        self.functions_factory = functions_factory
        self._stoppers: list[tuple[str, Callable[[], None]]] = []
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.broker: BrokerServer | None = None
        self.platform: LocalPlatform | None = None
        self.control: HttpServer | None = None
        self.functions_url = ""
        self.gateway: subprocess.Popen[bytes] | None = None
        self.publisher: Publisher | None = None
        self.state: RunState | None = None
        self._ping_stop = threading.Event()

    @property
    def gateway_url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}"

    def _on_stop(self, name: str, fn: Callable[[], None]) -> None:
        self._stoppers.append((name, fn))

    # --- start -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.s
        if port_in_use(s.host, s.port):
            raise UpError(f"port {s.port} on {s.host} is already in use: pass --port with a "
                          "free port")
        try:
            existing = RunState.read(self.state_dir)
        except UpError:
            existing = None
        if existing is not None:
            raise UpError(f"`surefoot up` is already running (pid {existing.pid}, gateway "
                          f"{existing.gateway_url}); stop it first")
        run_dir = self.state_dir
        ckpt_dir = run_dir / "checkpoints"
        log_dir = run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        # Each child process gets its stopper before it starts: Ctrl-C during its start must
        # still stop it.
        if not self.redis_url:
            self.redis = EmbeddedRedis()
            self._on_stop("redis", self.redis.stop)
            self.redis.start()
            self.redis_url = self.redis.url
        log.info("redis at %s", self.redis_url)

        self.broker = BrokerServer(BrokerSettings(host="127.0.0.1", port=0)).start()
        self._on_stop("broker", self.broker.stop)
        sender = Sender(SenderSettings())
        self.publisher = Publisher(sender, self.broker.url)
        self._on_stop("publisher", lambda: self.publisher.close(2) if self.publisher else None)

        # Replicas share this machine's cores: more engine threads than cores only makes them
        # wait on each other (llama.cpp's OpenMP threads spin).
        replicas = s.primary_replicas + s.fallback_replicas
        threads = s.replica_threads or max(1, (os.cpu_count() or 1) // replicas)
        # the replica's own grace leaves time for its exit snapshot within the platform's
        replica_grace = max(1.0, s.grace_seconds * 0.7)
        common = ["--max-tokens", str(s.max_tokens), "--n-threads", str(threads),
                  "--grace-seconds", f"{replica_grace:g}"]
        primary_args = ["--model", s.model, "--n-ctx", str(s.n_ctx), "--embedding-model",
                        "all-minilm-l6-v2" if s.embeddings else "", *common]
        fallback_args = ["--model", s.fallback_model, "--n-ctx", str(s.fallback_n_ctx),
                         "--embedding-model", "", *common]
        revisions = [
            RevisionSpec(s.primary_revision, s.service, "primary", s.primary_replicas,
                         s.primary_replicas + 2, tuple(primary_args)),
            RevisionSpec(s.fallback_revision, s.service, "fallback", s.fallback_replicas,
                         s.fallback_replicas + 2, tuple(fallback_args)),
        ]
        traffic = {s.service: [Target(s.primary_revision, 100, "primary"),
                               Target(s.fallback_revision, 0, "fallback")]}
        self.platform = LocalPlatform(
            LocalSettings(nodes=s.nodes, checkpoint_dir=str(ckpt_dir), log_dir=str(log_dir),
                          redis_url=self.redis_url, grace_seconds=s.grace_seconds,
                          env={"SUREFOOT_ADMIN_TOKEN": self.admin_token}),
            revisions, traffic, emit=self.publisher,
        )
        self._on_stop("replicas", lambda: self.platform.stop() if self.platform else None)
        self.platform.start()

        self.control = HttpServer(create_control_app(self.platform), "127.0.0.1", 0)
        self.control.start()
        self._on_stop("control", self.control.stop)

        mounted = self.functions_factory(self) if self.functions_factory else None
        if mounted is not None:
            self.functions_url = mounted.url
            self._on_stop("functions", mounted.stop)
            for t in mounted.triggers():
                self.broker.broker.add_trigger(t)

        self._start_gateway(log_dir)

        if s.gpu_source:
            self._start_gpu_source()
        if s.checkpoint_interval > 0:
            threading.Thread(target=self._ping_loop, name="checkpoint-timer",
                             daemon=True).start()
            self._on_stop("checkpoint timer", self._ping_stop.set)

        self.state = RunState(
            pid=os.getpid(), service=s.service, gateway_url=self.gateway_url,
            control_url=self.control.url, broker_url=self.broker.url,
            functions_url=self.functions_url, redis_url=self.redis_url,
            checkpoint_dir=str(ckpt_dir), log_dir=str(log_dir), admin_token=self.admin_token,
            primary_revision=s.primary_revision, fallback_revision=s.fallback_revision,
        )
        path = self.state.write(self.state_dir)
        self._on_stop("state file", lambda: path.unlink(missing_ok=True))

    def _start_gateway(self, log_dir: Path) -> None:
        assert self.control is not None and self.broker is not None
        s = self.s
        cmd = [
            sys.executable, "-m", "surefoot", "gateway", "--host", s.host, "--port", str(s.port),
            "--platform", "local", "--control-url", self.control.url, "--service", s.service,
            "--fallback-revision", s.fallback_revision, "--redis-url", self.redis_url,
            "--events-sink", self.broker.url, "--refresh-interval", "0.25",
        ]
        env = {**os.environ, "SUREFOOT_GATEWAY_ADMIN_TOKEN": self.admin_token}
        self._on_stop("gateway", self._stop_gateway)
        logf = open(log_dir / "gateway.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.gateway = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        finally:
            logf.close()

    def _stop_gateway(self) -> None:
        p = self.gateway
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        except ProcessLookupError:
            pass

    def _start_gpu_source(self) -> None:
        assert self.publisher is not None
        try:
            svc = GpuSourceService(GpuSourceSettings(node="node-1"), emit=self.publisher)
            svc.start()
        except Exception as exc:  # no driver is normal here: the source idles
            log.info("GPU health source not started: %s", exc)
            return
        self._on_stop("gpu source", svc.stop)

    def _ping_loop(self) -> None:
        while not self._ping_stop.wait(self.s.checkpoint_interval):
            if self.publisher is not None:
                self.publisher(Event(type=KNATIVE_PING, source="/surefoot/local/checkpoint-timer",
                                     id=str(uuid.uuid4()), data={"reason": "timer"}))

    def wait_ready(self, stop: threading.Event | None = None) -> bool:
        """Wait for every replica and the gateway; False if the timeout ran out or ``stop``
        was set."""
        assert self.platform is not None
        stop = stop or threading.Event()
        deadline = time.monotonic() + self.s.ready_timeout
        while not self.platform.wait_ready(min(0.5, max(0.0, deadline - time.monotonic()))):
            self._check_gateway()
            if stop.is_set() or time.monotonic() >= deadline:
                return False
        while time.monotonic() < deadline and not stop.is_set():
            self._check_gateway()
            try:
                if httpx.get(f"{self.gateway_url}/readyz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def _check_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is not None:
            raise UpError(f"the gateway exited with {self.gateway.returncode}; see "
                          f"{self.state_dir / 'logs' / 'gateway.log'}")

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        while self._stoppers:
            name, fn = self._stoppers.pop()
            try:
                fn()
            except Exception:
                log.exception("stopping %s failed", name)

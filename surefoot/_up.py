"""The wiring of ``surefoot up``: the whole system on one machine, from settings.

Embedded Redis; the local platform with the primary revision (3 replicas under anti-affinity on
4 simulated nodes) and the fallback revision; the control API; the gateway as its own process;
the local broker and its triggers; the functions host; the GPU health source; the checkpoint
timer. A state file tells ``surefoot status|kill|evict|inject|drill`` where everything is.
Redis and the gateway are supervised as the platform supervises replicas
(:mod:`surefoot._up_supervise`); Redis keeps an append-only file in the state directory and the
operator's forced breakers a copy of their own (:mod:`surefoot._up_durable`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from flask import Response, jsonify

from envreader import read_value
from events import (
    KNATIVE_PING,
    BrokerServer,
    BrokerSettings,
    Event,
    GpuSourceService,
    GpuSourceSettings,
    HttpServer,
    Publisher,
    Sender,
    SenderSettings,
)
from knative import Target
from knative.breakers import (
    BreakerError,
    BreakerRegistrySettings,
    DurableBreakers,
    EmbeddedRedis,
    InvalidBreakerSettings,
    redacted,
)
from knative.platforms.local import LocalPlatform, LocalSettings, RevisionSpec, create_control_app
from surefoot._up_durable import dead_letter_path, file_breakers
from surefoot._up_gateway import Gateways, free_port, gateway_command, gateway_env
from surefoot._up_supervise import (
    Supervised,
    Supervisor,
    prune_replica_logs,
)

log = logging.getLogger(__name__)


class UpError(Exception):
    """``surefoot up`` cannot start; the message says what to fix. ``failed``: the operation
    failed (exit 1) rather than the input being bad (exit 2)."""

    def __init__(self, message: str, *, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where ``surefoot up`` keeps its state: ``$XDG_CACHE_HOME/surefoot/run`` (``~/.cache``
    when that is not set)."""
    base = read_value(env, "XDG_CACHE_HOME", str, "") or str(Path.home() / ".cache")
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
    # sequences each replica's engine decodes together; 0: 1 (the single-sequence engine)
    # when the replicas share the cores one thread each, else the engine's own default
    replica_slots: int = 0
    ready_timeout: float = 180.0
    replica_logs_kept: int = 3  # logs of gone replicas kept per revision
    standby: int = 1  # loaded standby replicas per revision, that take over a lost replica
    gateways: int = 2  # gateway processes sharing the port: one lost leaves the others serving
    restart_backoff: float = 0.1  # first restart of Redis or the gateway; doubles per crash
    restart_backoff_max: float = 10.0

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

    def __init__(self, settings: UpSettings, env: Mapping[str, str],
                 functions_factory: Callable[[LocalSystem], Any | None] | None = None) -> None:
        """``env``: the environment the child processes inherit (and where the default state
        directory is found)."""
        self.s = settings
        self.env = dict(env)
        self.state_dir = Path(settings.state_dir or default_state_dir(env))
        self.admin_token = settings.admin_token or secrets.token_urlsafe(16)
        # shared by the gateway and the replicas only: it lets the gateway resume a broken or
        # stalled stream on another replica from the tokens already sent
        self.internal_token = secrets.token_urlsafe(16)
        self.functions_factory = functions_factory
        self._stoppers: list[tuple[str, Callable[[], None]]] = []
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.broker: BrokerServer | None = None
        self.platform: LocalPlatform | None = None
        self.control: HttpServer | None = None
        self.functions_url = ""
        self.gateways = Gateways(settings.gateways, self._gateway_command,
                                 lambda: gateway_env(self.env, self.admin_token,
                                                     self.internal_token),
                                 self.state_dir / "logs", settings.host,
                                 lambda: free_port(settings.host))
        self.durable: DurableBreakers | None = None
        self.supervisor: Supervisor | None = None
        self.publisher: Publisher | None = None
        self.state: RunState | None = None
        self._ping_stop = threading.Event()

    @property
    def gateway(self) -> subprocess.Popen[bytes] | None:
        """The first gateway's master process (a new one after each restart)."""
        return self.gateways.first

    @property
    def gateway_url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}"

    def _on_stop(self, name: str, fn: Callable[[], None]) -> None:
        self._stoppers.append((name, fn))

    # --- start -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every component in order; each child process gets its stopper before it
        starts, so Ctrl-C during its start still stops it."""
        self._check_not_running()
        ckpt_dir = self.state_dir / "checkpoints"
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        self._supervise()
        self._start_broker()
        self._start_platform(ckpt_dir, log_dir)
        self._start_control()
        self._mount_functions()
        self._start_gateway(log_dir)
        if self.s.gpu_source:
            self._start_gpu_source()
        if self.s.checkpoint_interval > 0:
            threading.Thread(target=self._ping_loop, name="checkpoint-timer",
                             daemon=True).start()
            self._on_stop("checkpoint timer", self._ping_stop.set)
        self._write_state(ckpt_dir, log_dir)

    def _check_not_running(self) -> None:
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
                          f"{existing.gateway_url}); stop it first", failed=True)

    def _start_redis(self) -> None:
        """The embedded Redis (append-only file in the state dir; the forced breakers kept
        in ``forced.json`` are written back before it lets clients in), or the one given."""
        if not self.redis_url:
            self.redis = EmbeddedRedis(data_dir=str(self.state_dir / "redis"), persist=True)
            self.redis_url = self.redis.url
        else:
            _check_redis(self.redis_url)
        try:
            settings = BreakerRegistrySettings.from_env(self.env, redis_url=self.redis_url)
        except (InvalidBreakerSettings, BreakerError) as exc:
            raise UpError(str(exc)) from None
        self.durable = file_breakers(self.state_dir / "forced.json", settings)
        self._on_stop("durable breakers", self.durable.close)
        if self.redis is not None:
            self.redis.prepare = self.durable.restore
            self._on_stop("redis", self.redis.stop)
            self.redis.start()
        log.info("redis at %s", self.redis_url)

    def _supervise(self) -> None:
        """Redis supervised from now on; the gateway joins once it has started
        (:meth:`wait_ready`); the chores: replica log retention, the durable copy."""
        s = self.s
        children = []
        if self.redis is not None:
            children.append(Supervised("redis", _RedisChild(self.redis), backoff=s.restart_backoff,
                                       backoff_max=s.restart_backoff_max))
        chores: list[tuple[float, Callable[[], None]]] = [(5.0, self._prune_logs)]
        if self.durable is not None:
            chores.append((0.25, self.durable.sync))
        self.supervisor = Supervisor(children, chores).start()
        self._on_stop("supervisor", self.supervisor.stop)

    def _prune_logs(self) -> None:
        if self.platform is None:
            return
        st = self.platform.status()
        live = {Path(r["log"]).stem for r in st["replicas"] + st.get("standby", [])}
        prune_replica_logs(self.state_dir / "logs", [r["name"] for r in st["revisions"]],
                           live, self.s.replica_logs_kept)

    def components(self) -> list[dict[str, Any]]:
        """What ``surefoot up`` runs itself, with restarts (for ``surefoot status``)."""
        return self.supervisor.status() if self.supervisor is not None else []

    def _start_broker(self) -> None:
        dead = SenderSettings(dead_letter=str(dead_letter_path(self.state_dir)))
        self.broker = BrokerServer(BrokerSettings(host="127.0.0.1", port=0, sender=dead)).start()
        self._on_stop("broker", self.broker.stop)
        sender = Sender(SenderSettings())
        self.publisher = Publisher(sender, self.broker.url)
        self._on_stop("publisher", lambda: self.publisher.close(2) if self.publisher else None)

    def _revisions(self) -> list[RevisionSpec]:
        """The primary and fallback revisions, with the arguments of ``surefoot serve``."""
        s = self.s
        # Replicas share this machine's cores: more engine threads than cores only makes them
        # wait on each other (llama.cpp's OpenMP threads spin).
        threads = self._replica_threads()
        # the replica's own grace leaves time for its exit snapshot within the platform's
        replica_grace = max(1.0, s.grace_seconds * 0.7)
        common = ["--max-tokens", str(s.max_tokens), "--n-threads", str(threads),
                  "--grace-seconds", f"{replica_grace:g}"]
        primary_args = ["--model", s.model, "--n-ctx", str(s.n_ctx), "--embedding-model",
                        "all-minilm-l6-v2" if s.embeddings else "", *common]
        fallback_args = ["--model", s.fallback_model, "--n-ctx", str(s.fallback_n_ctx),
                         "--embedding-model", "", *common]
        return [
            RevisionSpec(s.primary_revision, s.service, "primary", s.primary_replicas,
                         s.primary_replicas + 2, tuple(primary_args)),
            RevisionSpec(s.fallback_revision, s.service, "fallback", s.fallback_replicas,
                         s.fallback_replicas + 2, tuple(fallback_args)),
        ]

    def _slots_env(self) -> dict[str, str]:
        """The replicas' ``SUREFOOT_SLOTS``: the setting, else the environment's, else 1 when
        they share this machine's cores one thread each. Their concurrency is then the
        replicas' own, and batching in each would only add CPU to every request (about 20% on
        a short one, ``docs/engine.md``)."""
        s = self.s
        if s.replica_slots:
            return {"SUREFOOT_SLOTS": str(s.replica_slots)}
        if "SUREFOOT_SLOTS" in self.env:
            return {}
        return {"SUREFOOT_SLOTS": "1"} if self._replica_threads() < 2 else {}

    def _replica_threads(self) -> int:
        """Engine threads per replica: the setting, else this machine's cores shared out
        among the replicas (at least 1)."""
        s = self.s
        replicas = s.primary_replicas + s.fallback_replicas
        return s.replica_threads or max(1, (os.cpu_count() or 1) // replicas)

    def _start_platform(self, ckpt_dir: Path, log_dir: Path) -> None:
        s = self.s
        traffic = {s.service: [Target(s.primary_revision, 100, "primary"),
                               Target(s.fallback_revision, 0, "fallback")]}
        self.platform = LocalPlatform(
            LocalSettings(nodes=s.nodes, checkpoint_dir=str(ckpt_dir), log_dir=str(log_dir),
                          redis_url=self.redis_url, grace_seconds=s.grace_seconds,
                          standby=s.standby, env={"SUREFOOT_ADMIN_TOKEN": self.admin_token,
                               "SUREFOOT_INTERNAL_TOKEN": self.internal_token,
                               **self._slots_env()},
                          base_env=self.env),
            self._revisions(), traffic, emit=self.publisher,
        )
        self._on_stop("replicas", lambda: self.platform.stop() if self.platform else None)
        self.platform.start()

    def _start_control(self) -> None:
        assert self.platform is not None
        app = create_control_app(self.platform)
        app.add_url_rule("/components", "components", self._components_view)
        self.control = HttpServer(app, "127.0.0.1", 0)
        self.control.start()
        self._on_stop("control", self.control.stop)

    def _components_view(self) -> Response:
        return jsonify({"components": self.components()})

    def _mount_functions(self) -> None:
        assert self.broker is not None
        mounted = self.functions_factory(self) if self.functions_factory else None
        if mounted is not None:
            self.functions_url = mounted.url
            self._on_stop("functions", mounted.stop)
            for t in mounted.triggers():
                self.broker.broker.add_trigger(t)

    def _write_state(self, ckpt_dir: Path, log_dir: Path) -> None:
        assert self.control is not None
        assert self.broker is not None
        s = self.s
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
        self._on_stop("gateway", self.gateways.stop)
        self.gateways.launch()

    def _gateway_command(self) -> list[str]:
        assert self.control is not None
        assert self.broker is not None
        s = self.s
        return gateway_command(s.host, s.port, self.control.url, s.service,
                               s.fallback_revision, self.redis_url, self.broker.url)

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
        try:
            return self._wait_ready(stop)
        finally:
            self._supervise_gateway()

    def _supervise_gateway(self) -> None:
        """Restart the gateways from now on (an exit during start-up is a failed start)."""
        if self.supervisor is not None:
            self.gateways.supervise(self.supervisor, self.s.restart_backoff,
                                    self.s.restart_backoff_max)

    def _wait_ready(self, stop: threading.Event) -> bool:
        assert self.platform is not None
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
        gone = self.gateways.exited()
        if gone is not None:
            raise UpError(f"the {gone[0]} exited with {gone[1]}; see "
                          f"{self.state_dir / 'logs' / f'{gone[0]}.log'}")

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.supervisor is not None:  # first: nothing is restarted while it stops
            self.supervisor.stop()
        while self._stoppers:
            name, fn = self._stoppers.pop()
            try:
                fn()
            except Exception:
                log.exception("stopping %s failed", name)


def _check_redis(url: str) -> None:
    """A Redis given with ``--redis-url`` answers, and takes its password: else one line
    naming the setting, at start (not a hang, not a failure much later)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise UpError(f"--redis-url: Redis refused the credentials in the URL ({exc}); put "
                      "the right user and password in it (redis://USER:PASSWORD@HOST:PORT)",
                      failed=False) from None
    except redis.RedisError as exc:
        raise UpError(f"--redis-url: no Redis answers at {redacted(url)} ({exc})",
                      failed=True) from None
    finally:
        client.close()


class _RedisChild:
    """The embedded Redis as a supervised child (same port, same data dir on each start)."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def launch(self) -> None:
        self.server.start()

    def exited(self) -> int | None:
        return self.server.reap()

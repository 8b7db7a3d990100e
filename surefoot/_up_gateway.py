"""The gateways of ``surefoot up``: the OpenAI endpoint as two processes on one port.

A gateway is one process tree on one machine: a ``SIGKILL`` to its master ends every
connection it holds, and a restart takes the seconds of a Python start. So ``surefoot up`` runs
``count`` gateways sharing the port through ``SO_REUSEPORT`` (the kernel spreads new
connections over the listeners): when one dies the others keep answering while the supervisor
starts it again, as a cluster's second gateway pod would. Each is its own breaker view and
in-flight count, as separate pods are.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from surefoot._up_supervise import ProcessChild, Supervised, Supervisor, kill_group


class GatewayChild(ProcessChild):
    """One gateway process, with the port that is its own (kept across its restarts)."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], own_url: str) -> None:
        super().__init__(start)
        self.own_url = own_url

    def describe(self) -> dict[str, str]:
        return {"url": self.own_url} if self.own_url else {}


class Gateways:
    """``count`` supervised gateway processes; ``command()`` is one gateway's command line
    (without the port-sharing flag), ``env`` its environment."""

    def __init__(self, count: int, command: Callable[[], list[str]],
                 env: Callable[[], dict[str, str]], log_dir: Path, host: str = "127.0.0.1",
                 free_port: Callable[[], int] | None = None) -> None:
        self.count = max(1, count)
        self._command = command
        self._env = env
        self.log_dir = log_dir
        # with several on the shared port, each also listens on one of its own
        ports = [free_port() if free_port and self.count > 1 else 0 for _ in range(self.count)]
        self.own_ports = ports
        self.children = [GatewayChild(functools.partial(self._spawn, i),
                                      f"http://{host}:{p}" if p else "")
                         for i, p in enumerate(ports)]

    @staticmethod
    def name(i: int) -> str:
        return "gateway" if i == 0 else f"gateway-{i + 1}"

    @property
    def first(self) -> subprocess.Popen[bytes] | None:
        return self.children[0].proc

    def procs(self) -> list[subprocess.Popen[bytes] | None]:
        return [c.proc for c in self.children]

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        own = self.own_ports[i]
        cmd = self._command() + (["--reuse-port", "--own-port", str(own)] if own else [])
        logf = open(self.log_dir / f"{self.name(i)}.log", "ab")  # noqa: SIM115 - the child's
        try:
            return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self._env(),
                                    start_new_session=True)
        finally:
            logf.close()

    def launch(self) -> None:
        for c in self.children:
            c.launch()

    def supervise(self, sup: Supervisor, backoff: float, backoff_max: float) -> None:
        """Restart each gateway from now on (an exit during start-up is a failed start)."""
        known = {c.name for c in sup.children}
        for i, c in enumerate(self.children):
            if self.name(i) not in known and c.proc is not None and c.proc.poll() is None:
                sup.add(Supervised(self.name(i), c, backoff=backoff, backoff_max=backoff_max))

    def exited(self) -> tuple[str, int] | None:
        """The first gateway that has exited, with its code (during start-up: a failure)."""
        for i, p in enumerate(self.procs()):
            if p is not None and p.poll() is not None:
                return self.name(i), int(p.returncode)
        return None

    def stop(self) -> None:
        procs = [p for p in self.procs() if p is not None and p.poll() is None]
        for p in procs:
            kill_group(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                kill_group(p.pid, signal.SIGKILL)
                p.wait(5)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def gateway_command(host: str, port: int, control_url: str, service: str,
                    fallback_revision: str, redis_url: str, sink: str) -> list[str]:
    return [
        sys.executable, "-m", "surefoot", "gateway", "--host", host, "--port", str(port),
        "--platform", "local", "--control-url", control_url, "--service", service,
        "--fallback-revision", fallback_revision, "--redis-url", redis_url,
        "--events-sink", sink, "--refresh-interval", "0.25",
    ]


def gateway_env(base: Mapping[str, str], admin_token: str, internal_token: str) -> dict[str, str]:
    return {**base, "SUREFOOT_GATEWAY_ADMIN_TOKEN": admin_token,
            "SUREFOOT_GATEWAY_INTERNAL_TOKEN": internal_token}


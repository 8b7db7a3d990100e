"""Whether the client of a request is still there, asked by the engine between two steps.

A client that hangs up mid-generation (a chat's stop button, a gateway whose own client left)
is otherwise seen only when a write to its socket fails, which TCP reports one write after the
hang-up: the sequence holds its slot for two more steps. A slot is what the requests queued
behind it wait for, so the engine asks each live sequence's client before every step (a
zero-timeout ``poll`` of its socket for the peer's hang-up, a syscall of a microsecond) and a
sequence whose client is gone leaves at once, as llama.cpp's server does.

The serving process sets :data:`client_alive` for each request it serves (from the server's
socket, where the server exposes it; gunicorn does); the engine reads it when the request
asks for a slot, on the caller's thread.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from contextvars import ContextVar

Alive = Callable[[], bool]

client_alive: ContextVar[Alive | None] = ContextVar("client_alive", default=None)

_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


class ClientGone(Exception):
    """The client of a generation hung up; the generation ended there."""


def socket_probe(sock: socket.socket) -> Alive:
    """Whether the peer of ``sock`` has not hung up (nothing is read from it)."""
    poller = select.poll()
    poller.register(sock.fileno(), _GONE)

    def alive() -> bool:
        try:
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    return alive

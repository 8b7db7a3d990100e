"""A real HTTP server for a Flask app, in a background thread.

The broker, the GPU source's health endpoint and test subscribers all need to listen on a port
inside a process that does other work; werkzeug's threaded WSGI server (HTTP/1.1 keep-alive)
does that without a separate process.
"""

from __future__ import annotations

import socket
import threading

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (it costs more than the request on a busy broker)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int) and code >= 500:
            super().log_request(code, size)


class HttpServer:
    """A real WSGI server (werkzeug, threaded, HTTP/1.1 keep-alive) running in a thread."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        # Bind here: werkzeug exits the process when its own bind fails. OSError means the
        # address is taken (or not ours); the caller reports it.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            self._server: BaseWSGIServer = make_server(host, port, app, threaded=True,
                                                       request_handler=_QuietHandler,
                                                       fd=sock.fileno())
        finally:
            sock.close()  # werkzeug works on its own duplicate of the descriptor
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="http-server", daemon=True)
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A Redis that refuses the credentials stops a process at start with one line naming the
setting (and never printing the password); one that does not answer yet does not."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from knative.breakers import EmbeddedRedis, InvalidBreakerSettings, check_credentials, redacted

PASSWORD = "right-password-1234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[int]:
    server = EmbeddedRedis()
    proc = subprocess.Popen(server.command(PASSWORD), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = redis.Redis(port=server.port, password=PASSWORD)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield server.port
    proc.kill()
    proc.wait(10)


def test_check_credentials(locked_redis: int) -> None:
    assert check_credentials(f"redis://:{PASSWORD}@127.0.0.1:{locked_redis}/0")
    for url in (f"redis://:wrong-one@127.0.0.1:{locked_redis}/0",
                f"redis://127.0.0.1:{locked_redis}/0"):
        with pytest.raises(InvalidBreakerSettings) as info:
            check_credentials(url)
        assert str(info.value).startswith("SUREFOOT_REDIS_URL: ")
        assert "wrong-one" not in str(info.value)
    assert check_credentials(f"redis://127.0.0.1:{_free_port()}/0", timeout=0.5) is False


def test_redacted() -> None:
    assert redacted("redis://gw:secret@h:6379/0") == "redis://***@h:6379/0"
    assert redacted("rediss://h:6380/1") == "rediss://h:6380/1"


def test_gateway_with_a_wrong_password_stops_with_one_line(locked_redis: int) -> None:
    url = f"redis://:wrong-one@127.0.0.1:{locked_redis}/0"
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "gateway", "--port", str(_free_port()),
         "--target", "r1=100=http://127.0.0.1:9", "--redis-url", url],
        env={**os.environ, "SUREFOOT_GATEWAY_ADMIN_TOKEN": "admin-token-1234"},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "SUREFOOT_REDIS_URL" in proc.stderr
    assert "refused the credentials" in proc.stderr
    assert "wrong-one" not in proc.stderr
    assert "Traceback" not in proc.stderr


class _TlsFront:
    """A TLS endpoint (Python's ssl, a self-signed certificate made by openssl) that forwards
    every connection to a plain Redis: a stand-in for a managed Redis that speaks rediss://."""

    def __init__(self, cert: str, key: str, backend_port: int) -> None:
        import ssl
        import threading

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                raw, _ = self.sock.accept()
                conn = self.ctx.wrap_socket(raw, server_side=True)
            except OSError:
                continue
            back = socket.create_connection(("127.0.0.1", self.backend_port))
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


def test_rediss_with_a_private_ca(tmp_path, locked_redis: int) -> None:
    import shutil

    from knative.breakers import BreakerRegistrySettings, BreakerStore

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the test's certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    front = _TlsFront(str(cert), str(key), locked_redis)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{front.port}/0?ssl_ca_certs={cert}"
    assert check_credentials(url)
    store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=url))
    store.force_open("revision:tls", "over TLS")
    assert store.status("revision:tls").state == "forced_open"
    # without the CA the certificate is not trusted: an error, not a plaintext fallback
    untrusted = f"rediss://:{PASSWORD}@127.0.0.1:{front.port}/0"
    with pytest.raises(InvalidBreakerSettings, match="ssl_ca_certs"):
        check_credentials(untrusted, timeout=2)

"""Checking, at start, that Redis takes the credentials a process was given.

A wrong password is an operator's mistake that no retry repairs: every component would come up
and run blind (the gateway on its last view, the replicas' readiness stuck, the functions
unable to claim an event), logging the same refusal forever. Entry points therefore ask once
before serving and stop with one line that names the setting. A Redis that does not answer
yet is not an error here: the processes fail static and reconnect when it returns.
"""

from __future__ import annotations

import logging

import redis

from knative.breakers._states import InvalidBreakerSettings

log = logging.getLogger(__name__)


def redacted(url: str) -> str:
    """``url`` without the credentials in it (for what is printed or logged)."""
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url


def check_credentials(url: str, setting: str = "SUREFOOT_REDIS_URL",
                      timeout: float = 2.0) -> bool:
    """True when Redis at ``url`` answered with these credentials, False when it did not answer
    (down or unreachable: not decided here); :class:`InvalidBreakerSettings` naming
    ``setting`` when it refused them or the user may not even PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return True
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise InvalidBreakerSettings(
            f"{setting}: Redis at {redacted(url)} refused the credentials ({exc}); set the "
            "user and password of the URL (redis://USER:PASSWORD@HOST:PORT/DB)") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise InvalidBreakerSettings(
                f"{setting}: Redis at {redacted(url)} needs a password ({exc}); put it in the "
                "URL (redis://USER:PASSWORD@HOST:PORT/DB)") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            raise InvalidBreakerSettings(
                f"{setting}: the TLS certificate of Redis at {redacted(url)} is not trusted "
                f"({exc}); add ?ssl_ca_certs=/path/to/ca.pem to the URL") from None
        log.warning("Redis at %s does not answer yet (%s): serving on without it until it "
                    "does", redacted(url), exc)
        return False
    finally:
        client.close()

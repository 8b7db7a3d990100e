"""The breakers' vocabulary: keys, states, actions, errors, and the values every part hands on.

The store, the local view, the registry and the CloudEvent sink all speak of the same keys
(``revision:<name>``, ``node:<name>``, ``replica:<name>``), the same state strings (those of the
Lua scripts and of Redis) and the same :class:`Transition` and :class:`BreakerStatus`; they are
defined once here, below everything else in the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

# States. Strings on the wire and in Redis.
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
FORCED_OPEN = "forced_open"
FORCED_CLOSED = "forced_closed"
DISABLED = "disabled"
STATES = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED, DISABLED)

# What an operator or an event-driven function can ask for.
ACTIONS = ("open", "half_open", "close", "force_open", "force_closed", "disable", "reset")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@=-]{0,252}$")


class BreakerError(Exception):
    """Base of the breaker errors; ``temporary`` ones are worth a retry."""

    temporary = False


class BreakerUnavailable(BreakerError):
    """Redis did not answer in time (down, partitioned, restarting)."""

    temporary = True


class InvalidBreakerKey(BreakerError, ValueError):
    """A key that cannot name a breaker (empty, too long, braces or spaces in it)."""


class InvalidBreakerSettings(BreakerError, ValueError):
    """Settings out of range; the message names every bad field."""


def check_key(key: str) -> str:
    """``key`` if it can name a breaker; :class:`InvalidBreakerKey` otherwise."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidBreakerKey(
            f"breaker key {key!r} is not valid: use 1-253 characters of letters, digits and "
            "._:/@=- (e.g. revision:primary, node:node-1, replica:primary-0)"
        )
    return key


def revision_key(revision: str) -> str:
    return f"revision:{revision}"


def node_key(node: str) -> str:
    return f"node:{node}"


def replica_key(replica: str) -> str:
    return f"replica:{replica}"


def keys_for(revision: str, node: str | None, replica: str | None) -> list[str]:
    """The breaker keys a call to one replica is subject to, widest first."""
    keys = [revision_key(revision)]
    if node:
        keys.append(node_key(node))
    if replica:
        keys.append(replica_key(replica))
    return keys


def kind_of(key: str) -> str:
    """The kind of a key: the part before the first ``:`` (``node`` for ``node:n-1``)."""
    return key.split(":", 1)[0]


@dataclass(frozen=True)
class Transition:
    """One change of a breaker's state, as the script that made it reported it."""

    key: str
    old: str
    new: str
    generation: int
    at: float  # Redis time, seconds since the epoch
    until: float | None  # end of the wait in open (Redis time), for ``open``
    reason: str
    opens: int = 0  # opens since the last successful close (drives the backoff)


@dataclass(frozen=True)
class BreakerStatus:
    """One breaker as Redis (or the local view) holds it."""

    key: str
    state: str
    generation: int
    since: float | None = None  # Redis time of the last transition
    until: float | None = None
    opens: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "state": self.state,
            "generation": self.generation,
            "since": self.since,
            "until": self.until,
            "opens": self.opens,
            "reason": self.reason,
        }


class Permit(NamedTuple):
    """Leave to call a target; hand it back to :meth:`BreakerRegistry.record` with the result."""

    key: str
    generation: int
    counted: bool  # False in forced-closed / disabled: the result is not recorded


TransitionHook = Callable[[Transition], None]


def seconds_of_ms(v: Any) -> float | None:
    """A Redis millisecond timestamp as seconds; ``None`` for 0 or missing."""
    n = int(v or 0)
    return n / 1000.0 if n else None

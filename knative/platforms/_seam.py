"""The platform seam: everything that touches "the cluster" goes through this interface.

Functions, the gateway and the drill are written against :class:`Platform` alone, so the same
code runs on Knative (``KnativePlatform``, the kubernetes client) and on one machine
(``LocalPlatform``, real processes on simulated nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class PlatformError(Exception):
    """Base of the errors a platform raises; ``temporary`` ones are worth a retry."""

    temporary = False


class TemporaryPlatformError(PlatformError):
    """Try again later: 429, 5xx, a conflict that a re-read resolves, a timeout."""

    temporary = True


class PermanentPlatformError(PlatformError):
    """Retrying will not help: 400, 401, 403, 422, an object that does not exist."""


class NotFound(PermanentPlatformError):
    """The named service, revision, pod or node does not exist."""


class Conflict(TemporaryPlatformError):
    """A stale write (HTTP 409): re-read and retry."""


class TooManyRequests(TemporaryPlatformError):
    """HTTP 429, e.g. an eviction that a PodDisruptionBudget does not allow now."""


class Unauthorized(PermanentPlatformError):
    """HTTP 401 or 403: the credentials or the RBAC rules do not allow this."""


@dataclass(frozen=True)
class Replica:
    """One serving process or pod of a revision."""

    name: str
    node: str | None
    revision: str
    url: str | None
    ready: bool
    phase: str = "Running"  # Pending | Running | Terminating | Failed
    pid: int | None = None


@dataclass(frozen=True)
class Target:
    """One entry of a service's traffic block (Knative ``spec.traffic``)."""

    revision: str
    percent: int
    tag: str | None = None


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool = True
    unschedulable: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvictionReport:
    """What draining a node did: pods evicted, pods skipped (DaemonSet, opt-out), pods refused."""

    node: str
    evicted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # still blocked (429) when the drain timeout ran out
    seconds: float = 0.0
    messages: tuple[str, ...] = ()  # why each refused pod was refused, as the server said

    @property
    def complete(self) -> bool:
        return not self.refused


@runtime_checkable
class Platform(Protocol):
    """The operations Surefoot needs from a cluster, and nothing more."""

    def replicas(self, service: str) -> list[Replica]: ...

    def traffic(self, service: str) -> list[Target]: ...

    def set_traffic(self, service: str, targets: list[Target]) -> None: ...

    def set_scale(self, service: str, revision: str, min_scale: int, max_scale: int) -> None: ...

    def delete_replica(self, name: str) -> None: ...

    def nodes(self) -> list[Node]: ...

    def cordon(self, node: str) -> None: ...

    def uncordon(self, node: str) -> None: ...

    def label(self, node: str, key: str, value: str | None) -> None:
        """Set a node label; ``value=None`` removes it."""
        ...

    def evict(self, node: str, timeout: float = 120.0) -> EvictionReport: ...


def validate_traffic(targets: list[Target]) -> None:
    """Knative's webhook rule, which its schema does not express: percents sum to 100."""
    errors = []
    for t in targets:
        if not 0 <= t.percent <= 100:
            errors.append(f"traffic[{t.revision}].percent: {t.percent} is not within 0..100")
    total = sum(t.percent for t in targets)
    if total != 100:
        errors.append(f"traffic: percents sum to {total}, not 100")
    if errors:
        raise PermanentPlatformError("; ".join(errors))

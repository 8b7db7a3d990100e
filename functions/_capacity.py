"""How much each revision can still serve: ready replicas on nodes whose breaker is not open.

reroute_traffic splits traffic by these counts (a revision with none gets no share) and
quarantine_node refuses to cordon the last node that holds a ready replica of a revision; both
read the platform once and count the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from functions._context import Context
from knative import Replica
from knative.breakers import node_key

OPEN_STATES = ("open", "forced_open", "half_open")


@dataclass(frozen=True)
class Capacity:
    """Ready replicas of the primary and the fallback on nodes without an open breaker, and
    the nodes left out because their breaker is open."""

    primary: int
    fallback: int
    bad_nodes: tuple[str, ...] = ()

    @property
    def none_ready(self) -> bool:
        return self.primary == 0 and self.fallback == 0

    def line(self) -> str:
        text = f"ready: primary {self.primary}, fallback {self.fallback}"
        if self.bad_nodes:
            text += f" (not counted, breaker open: {', '.join(self.bad_nodes)})"
        return text


def healthy_ready(ctx: Context, replicas: list[Replica]) -> tuple[list[Replica], set[str]]:
    """The ready replicas of ``replicas`` on nodes whose breaker is not open, and those nodes
    whose breaker is."""
    ready = [r for r in replicas if r.ready]
    nodes = {r.node for r in ready if r.node}
    bad = {n for n in nodes if ctx.breakers.status(node_key(n)).state in OPEN_STATES}
    return [r for r in ready if r.node not in bad], bad


def capacity(ctx: Context) -> Capacity:
    """The ready capacity of the settings' primary and fallback revisions."""
    s = ctx.settings
    ok, bad = healthy_ready(ctx, ctx.platform.replicas(s.service))
    return Capacity(primary=sum(1 for r in ok if r.revision == s.primary_revision),
                    fallback=sum(1 for r in ok if r.revision == s.fallback_revision),
                    bad_nodes=tuple(sorted(bad)))

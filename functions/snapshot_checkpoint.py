"""snapshot_checkpoint: ask replicas to snapshot their serving state.

A replacement replica restores from the latest valid checkpoint of its revision, so recovery is
only as fresh as the last snapshot. Snapshots are taken on the timer (Knative's PingSource
``dev.knative.sources.ping``, or the local timer's ``checkpoint.requested``), on request
(``checkpoint.requested`` naming a revision, ``*`` for all, or a pod) and when a pod starts
terminating (``pod.deleted`` with ``terminating``: the grace period is the last chance).

The replicas come from ``platform.replicas``; each is asked with ``POST <url>/admin/snapshot``
(bearer ``admin_token`` when set), in parallel. ``snapshot_replicas``: ``one`` ready replica per
revision (the checkpoint is per revision) or ``all`` of them. A replica that answers 409 is
still loading and is skipped. The reply is one ``checkpoint.saved`` per snapshot taken (the
first in the HTTP reply, the rest to the sink). When none could be taken, a temporary failure
(5xx, timeout, refused) answers 503 so the broker redelivers; a permanent one (401/403: the
token is wrong; 404: no checkpoint store) answers 422.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from events import (
    KNATIVE_PING,
    CheckpointRequested,
    CheckpointSaved,
    Event,
    PodDeleted,
    payload_of,
)
from functions._common import check_type
from functions._context import ACTED, NOOP, Context, Outcome
from functions._errors import MAPPED, PermanentFunctionError, TemporaryFunctionError, map_error
from functions._once import once
from knative import Replica

log = logging.getLogger(__name__)

NAME = "snapshot_checkpoint"
TYPES = (KNATIVE_PING, CheckpointRequested.TYPE, PodDeleted.TYPE)
ALL = "*"
MAX_PARALLEL = 8


@dataclass(frozen=True)
class _Result:
    replica: Replica
    kind: str  # saved | loading | temporary | permanent
    detail: str = ""
    body: Mapping[str, Any] | None = None


@once(NAME)
def handle(event: Event, ctx: Context) -> Outcome:
    """Handle one event (idempotent by event id)."""
    check_type(NAME, event, TYPES)
    s = ctx.settings
    revision: str | None
    pod: str | None
    if event.type == KNATIVE_PING:
        data = event.data if isinstance(event.data, Mapping) else {}
        service = data.get("service")
        if service and service != s.service:
            return Outcome(NAME, NOOP, f"timer for service {service}, not {s.service}")
        revision = str(data["revision"]) if data.get("revision") else None
        pod = str(data["pod"]) if data.get("pod") else None
        revision = revision or (None if pod else ALL)
        reason = str(data.get("reason") or "timer")
    elif event.type == CheckpointRequested.TYPE:
        req = payload_of(event)
        assert isinstance(req, CheckpointRequested)
        revision, pod, reason = req.revision, req.pod, req.reason or "requested"
    else:
        deleted = payload_of(event)
        assert isinstance(deleted, PodDeleted)
        if not deleted.terminating:
            return Outcome(NAME, NOOP, f"pod {deleted.pod} is gone; nothing left to snapshot")
        if deleted.service and deleted.service != s.service:
            return Outcome(NAME, NOOP, f"pod {deleted.pod} belongs to {deleted.service}")
        revision, pod, reason = None, deleted.pod, "terminating"
    try:
        targets = select(ctx, revision, pod)
    except MAPPED as exc:
        raise map_error(exc, f"{NAME}: list replicas of {s.service}") from exc
    if not targets:
        what = f"pod {pod}" if pod else f"revision {revision}"
        return Outcome(NAME, NOOP, f"no replica of {what} to snapshot")
    return snapshot(ctx, targets, reason=reason)


def select(ctx: Context, revision: str | None, pod: str | None) -> list[Replica]:
    """The replicas to ask: the named pod (ready or terminating), else ready replicas of the
    revision (``*``: every revision), one or all per revision."""
    s = ctx.settings
    replicas = ctx.platform.replicas(s.service)
    if pod:
        return [r for r in replicas if r.name == pod and r.url]
    ready = sorted((r for r in replicas if r.ready and r.url), key=lambda r: r.name)
    wanted = [r for r in ready if revision in (None, ALL) or r.revision == revision]
    if s.snapshot_replicas == "all":
        return wanted
    one: dict[str, Replica] = {}
    for r in wanted:
        one.setdefault(r.revision, r)
    return list(one.values())


def _ask(ctx: Context, r: Replica) -> _Result:
    s = ctx.settings
    headers = {"Authorization": f"Bearer {s.admin_token}"} if s.admin_token else {}
    url = f"{str(r.url).rstrip('/')}/admin/snapshot"
    try:
        resp = ctx.http.post(url, headers=headers)
    except httpx.HTTPError as exc:
        return _Result(r, "temporary", f"{type(exc).__name__}: {exc}")
    text = resp.text[:300]
    if resp.status_code == 201:
        try:
            body = resp.json()
        except ValueError:
            return _Result(r, "temporary", f"201 without a JSON body: {text!r}")
        if not isinstance(body, dict) or not body.get("id"):
            return _Result(r, "temporary", f"201 without a checkpoint id: {text!r}")
        return _Result(r, "saved", body=body)
    if resp.status_code == 409:
        return _Result(r, "loading", f"409: {text}")
    if (resp.status_code >= 500 and resp.status_code != 507) or resp.status_code in (408, 429):
        return _Result(r, "temporary", f"{resp.status_code}: {text}")
    return _Result(r, "permanent", f"{resp.status_code}: {text}")


def snapshot(ctx: Context, targets: list[Replica], *, reason: str) -> Outcome:
    """Ask every target at once; one ``checkpoint.saved`` per snapshot taken."""
    s = ctx.settings
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets)),
                            thread_name_prefix="snapshot") as pool:
        results = list(pool.map(lambda r: _ask(ctx, r), targets))
    saved: list[Event] = []
    for res in results:
        if res.kind != "saved":
            level = logging.INFO if res.kind == "loading" else logging.WARNING
            log.log(level, "snapshot of %s (%s) not taken: %s", res.replica.name, res.kind,
                    res.detail)
            continue
        body = res.body or {}
        seconds = body.get("seconds")
        saved.append(ctx.event(NAME, CheckpointSaved(
            revision=str(body.get("revision") or res.replica.revision) or None,
            pod=res.replica.name, namespace=s.namespace, checkpoint_id=str(body["id"]),
            seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            reason=reason)))
    failed = {k: [r for r in results if r.kind == k] for k in ("temporary", "permanent", "loading")}
    summary = ", ".join(f"{len(v)} {k}" for k, v in failed.items() if v)
    if saved:
        return Outcome(NAME, ACTED, f"{len(saved)} snapshot(s) taken" +
                       (f"; not taken: {summary}" if summary else ""),
                       reply=saved[0], extra=tuple(saved[1:]),
                       details={"results": {r.replica.name: r.kind for r in results}})
    detail = "; ".join(f"{r.replica.name}: {r.detail}" for r in results)
    if failed["temporary"]:
        raise TemporaryFunctionError(f"{NAME}: no snapshot taken ({detail})")
    if failed["permanent"]:
        raise PermanentFunctionError(f"{NAME}: no snapshot taken ({detail})")
    return Outcome(NAME, NOOP, f"replicas still loading ({detail})")

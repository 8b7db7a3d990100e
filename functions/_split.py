"""The traffic split arithmetic of reroute_traffic: pure functions over ``Target`` lists.

Kept apart from the function so every rule about percents can be read (and tested) alone:
moving the primary's share to the fallback, restoring it in steps, and splitting the pair's
share in proportion to the ready capacity each revision has left.
"""

from __future__ import annotations

import json
from typing import Any

from functions._errors import PermanentFunctionError
from knative import Target


def is_target(t: Target, revision: str, tag: str) -> bool:
    return t.revision == revision or (bool(tag) and t.tag == tag)


def find(targets: list[Target], revision: str, tag: str) -> Target | None:
    return next((t for t in targets if is_target(t, revision, tag)), None)


def percent_of(targets: list[Target], revision: str, tag: str) -> int:
    t = find(targets, revision, tag)
    return t.percent if t is not None else 0


def rerouted_split(current: list[Target], settings: Any) -> list[Target]:
    """The split with the primary at 0% (tag kept) and its share added to the fallback."""
    s = settings
    primary = find(current, s.primary_revision, s.primary_tag)
    if primary is None:
        raise PermanentFunctionError(
            f"the primary revision {s.primary_revision!r} (tag {s.primary_tag!r}) is not in the "
            f"traffic of service {s.service!r}; nothing to reroute"
        )
    share = primary.percent
    fallback = find(current, s.fallback_revision, s.fallback_tag)
    out = []
    for t in current:
        if t is primary:
            out.append(Target(t.revision, 0, t.tag or s.primary_tag))
        elif t is fallback:
            out.append(Target(t.revision, t.percent + share, t.tag or s.fallback_tag))
        else:
            out.append(t)
    if fallback is None:
        out.append(Target(s.fallback_revision, share, s.fallback_tag))
    return out


def split_at(current: list[Target], settings: Any, primary_percent: int) -> list[Target]:
    """The split with the primary at ``primary_percent`` of the pair's pool (the primary's
    and the fallback's shares together), the fallback taking the rest; other targets kept."""
    s = settings
    with_fallback = rerouted_split(current, s)  # adds the fallback when it is missing
    primary = find(with_fallback, s.primary_revision, s.primary_tag)
    fallback = find(with_fallback, s.fallback_revision, s.fallback_tag)
    assert primary is not None
    assert fallback is not None
    pool = primary.percent + fallback.percent
    want = min(max(primary_percent, 0), pool)
    return _shared(with_fallback, primary, fallback, want, pool)


def _shared(current: list[Target], primary: Target, fallback: Target, want: int,
            pool: int) -> list[Target]:
    """``current`` with the primary at ``want`` and the fallback at the rest of ``pool``."""
    out = []
    for t in current:
        if t is primary:
            out.append(Target(t.revision, want, t.tag))
        elif t is fallback:
            out.append(Target(t.revision, pool - want, t.tag))
        else:
            out.append(t)
    return out


def pool_of(current: list[Target], settings: Any) -> int:
    s = settings
    return (percent_of(current, s.primary_revision, s.primary_tag)
            + percent_of(current, s.fallback_revision, s.fallback_tag))


def capacity_share(pool: int, normal: int, primary_ready: int, fallback_ready: int) -> int:
    """The primary's percent when the pair's ``pool`` follows ready capacity: in proportion to
    the ready replicas of each revision, never above the primary's ``normal`` share while the
    fallback can take the rest; all of it to the primary when the fallback has none ready."""
    if fallback_ready <= 0:
        return pool
    if primary_ready <= 0:
        return 0
    return min(normal, round(pool * primary_ready / (primary_ready + fallback_ready)))


def restored_split(current: list[Target], settings: Any, normal_primary: int,
                   step: int) -> list[Target]:
    """The split at ``step`` percent of the primary's ``normal_primary`` share; the pair's
    total stays the same and the primary's share never goes down."""
    s = settings
    primary = find(current, s.primary_revision, s.primary_tag)
    fallback = find(current, s.fallback_revision, s.fallback_tag)
    if primary is None or fallback is None:
        raise PermanentFunctionError(
            f"service {s.service!r} no longer routes to both {s.primary_revision!r} and "
            f"{s.fallback_revision!r}; cannot restore"
        )
    pool = primary.percent + fallback.percent
    want = normal_primary if step >= 100 else round(normal_primary * step / 100)
    want = min(max(want, primary.percent), pool)
    return _shared(current, primary, fallback, want, pool)


def wire(targets: list[Target]) -> tuple[dict[str, Any], ...]:
    out = []
    for t in targets:
        d: dict[str, Any] = {"revisionName": t.revision, "percent": t.percent}
        if t.tag:
            d["tag"] = t.tag
        out.append(d)
    return tuple(out)


def encode(targets: list[Target]) -> str:
    return json.dumps([[t.revision, t.percent, t.tag] for t in targets])


def decode(raw: Any) -> list[Target] | None:
    if raw is None:
        return None
    try:
        return [Target(str(r), int(p), t) for r, p, t in json.loads(raw)]
    except (ValueError, TypeError):
        return None

"""The operator's handle on the breakers through a gateway: list them, force or reset one.

Behind a bearer token (``SUREFOOT_GATEWAY_ADMIN_TOKEN``; no token, no admin API). Every bad
field of a request is named in one 400; a key that names no revision, node or replica the
gateway knows (its routing table, or a breaker already in the store) is a 404 listing the known
ones, unless the request says ``"create": true`` (a breaker no request consults would otherwise
be created by a typo); a breaker store that cannot be reached is a 503 that the caller may retry
(:class:`BreakerUnavailable` is passed on for that).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any

from knative.breakers import (
    ACTIONS,
    BreakerError,
    BreakerRegistry,
    BreakerUnavailable,
    InvalidBreakerKey,
    check_key,
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="surefoot-admin"'}
_FIELDS = frozenset({"action", "reason", "create"})
_KINDS = ("revision", "node", "replica")


def known_names(keys: Iterable[str]) -> dict[str, list[str]]:
    """Breaker keys grouped by kind: ``{"revision": [names], "node": [...], "replica": [...]}``
    (the names without their ``kind:`` prefix)."""
    out: dict[str, set[str]] = {k: set() for k in _KINDS}
    for key in keys:
        kind, _, name = key.partition(":")
        if kind in out and name:
            out[kind].add(name)
    return {k: sorted(v) for k, v in out.items()}


class AdminError(Exception):
    """An admin request refused: its HTTP status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.extra = extra or {}


def _body_errors(body: dict[str, Any]) -> list[str]:
    errors = []
    action = body.get("action")
    if action is None:
        errors.append(f"action: missing; one of {', '.join(ACTIONS)}")
    elif action not in ACTIONS:
        errors.append(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        errors.append("reason: must be a string of at most 500 characters")
    if not isinstance(body.get("create", False), bool):
        errors.append("create: must be true or false")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        errors.append(f"unknown fields: {', '.join(unknown)}")
    return errors


class BreakerAdmin:
    """The admin operations of one gateway over its breaker registry (or none)."""

    def __init__(self, token: str | None, breakers: BreakerRegistry | None) -> None:
        self._token = token
        self._breakers = breakers

    def authorize(self, authorization: str | None) -> None:
        """Check an ``Authorization`` header; :class:`AdminError` 401/403 when it fails."""
        token = self._token
        if not token:
            raise AdminError(403, "the admin API is disabled: no admin token is configured "
                                  "(SUREFOOT_GATEWAY_ADMIN_TOKEN)")
        if not authorization:
            raise AdminError(401, "Authorization: missing; send 'Authorization: Bearer <token>'",
                             _CHALLENGE)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AdminError(401, "Authorization: expected 'Bearer <token>'", _CHALLENGE)
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise AdminError(403, "Authorization: the token is not valid")

    def _registry(self) -> BreakerRegistry:
        if self._breakers is None:
            raise AdminError(503, "breakers are not configured on this gateway")
        return self._breakers

    def report(self, targets: Iterable[str] = ()) -> dict[str, Any]:
        """Every breaker in the store, this process's view of them, and the names a breaker
        may be acted on by (``targets``: the keys of the gateway's routing table)."""
        reg = self._registry()
        rows, stale = reg.statuses()
        age = reg.view_age
        return {
            "breakers": [s.to_json() for s in rows],
            "known": known_names([*targets, *(s.key for s in rows)]),
            "stale": stale,
            "degraded": reg.degraded,
            "view_age": None if age == float("inf") else round(age, 3),
            "locally_open": reg.locally_open(),
            # this process's in-memory view, the one its request path reads
            "view": {k: v.state for k, v in reg.view().items()},
        }

    def act(self, key: str, body: Any,
            targets: Callable[[], Iterable[str]] | None = None) -> dict[str, Any]:
        """Apply ``{"action": ..., "reason": ..., "create": false}`` to the breaker ``key``.
        With ``targets`` (the keys the routing table names), a key that is neither one of
        them nor a breaker in the store is refused with 404 unless ``create`` is true."""
        errors = []
        try:
            check_key(key)
        except InvalidBreakerKey as exc:
            errors.append(f"key: {exc}")
        if not isinstance(body, dict):
            raise AdminError(
                400, "body: expected a JSON object like {\"action\": \"force_open\"}; "
                     f"actions: {', '.join(ACTIONS)}")
        errors += _body_errors(body)
        if errors:
            raise AdminError(400, "; ".join(errors))
        reg = self._registry()
        if targets is not None and not body.get("create", False):
            self._check_known(reg, key, targets())
        action = str(body["action"])
        try:
            t = reg.act(key, action, body.get("reason", "") or f"operator: {action}")
        except BreakerUnavailable:
            raise
        except BreakerError as exc:
            raise AdminError(400, str(exc)) from exc
        return {
            "key": key,
            "action": action,
            "changed": t is not None,
            "transition": None if t is None else {
                "old": t.old, "new": t.new, "generation": t.generation, "reason": t.reason,
            },
            "status": reg.store.status(key).to_json(),
        }

    def _check_known(self, reg: BreakerRegistry, key: str, targets: Iterable[str]) -> None:
        rows, _ = reg.statuses()
        keys = {*targets, *(s.key for s in rows)}
        if key in keys:
            return
        known = known_names(keys)
        listed = "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in known.items())
        hint = ""
        if ":" not in key:
            hint = f" (a key is kind:name, e.g. revision:{key})"
        raise AdminError(
            404, f"no breaker {key!r}: it names no known revision, node or replica{hint}; "
                 f"known {listed}; send \"create\": true to create it on purpose",
            extra={"known": known})

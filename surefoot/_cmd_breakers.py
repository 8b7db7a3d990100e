"""``surefoot breakers``: the operator's handle on the breakers, without curl or key formats.

Talks to a gateway's admin API (``/admin/breakers``) with its token: the gateway and token of a
running ``surefoot up`` by default, or ``--gateway-url`` with ``SUREFOOT_GATEWAY_ADMIN_TOKEN``.
A breaker is named as people name what it guards (``--revision``, ``--node``, ``--replica``);
a name the gateway does not know is refused (exit 2, one line listing the valid names) unless
``--create`` says it is meant.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from surefoot.cli import EXIT_FAILED, CliError

# CLI action -> admin API action
ACTIONS = {"open": "open", "force-open": "force_open", "force-close": "force_closed",
           "reset": "reset"}
_KINDS = ("revision", "node", "replica")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "breakers", help="list the breakers, or open, force or reset one",
        description="List the breakers (default), or act on the one of a revision, node or "
                    "replica through the gateway's admin API.")
    _common(p)
    sub = p.add_subparsers(dest="breakers_action", metavar="ACTION")
    lst = sub.add_parser("list", help="every breaker, and the names they may be given")
    _common(lst)
    for name in ACTIONS:
        a = sub.add_parser(name, help=f"{name} the breaker of a revision, node or replica")
        _common(a)
        who = a.add_mutually_exclusive_group(required=True)
        for kind in _KINDS:
            who.add_argument(f"--{kind}", metavar="NAME", help=f"the breaker of this {kind}")
        a.add_argument("--reason", default="", help="why (kept with the state)")
        a.add_argument("--create", action="store_true",
                       help="act even if the gateway knows no such name (creates the breaker)")
    p.set_defaults(func=run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the admin API's JSON")
    p.add_argument("--state-dir", default=argparse.SUPPRESS,
                   help="state of `surefoot up` (default ~/.cache/surefoot/run)")
    p.add_argument("--gateway-url", default=argparse.SUPPRESS,
                   help="a gateway instead of the one of `surefoot up` (token from "
                        "SUREFOOT_GATEWAY_ADMIN_TOKEN)")


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """The gateway URL and the admin token."""
    url = getattr(args, "gateway_url", None)
    if url:
        from envreader import read_value

        token = str(read_value(os.environ, "SUREFOOT_GATEWAY_ADMIN_TOKEN", str, ""))
        if not token:
            raise CliError("--gateway-url needs SUREFOOT_GATEWAY_ADMIN_TOKEN (the gateway's "
                           "admin token)")
        return str(url).rstrip("/"), token
    from surefoot._up import RunState, UpError, default_state_dir

    state_dir = getattr(args, "state_dir", None)
    try:
        st = RunState.read(Path(state_dir) if state_dir else default_state_dir(os.environ))
    except UpError as exc:
        raise CliError(str(exc)) from exc
    return st.gateway_url, st.admin_token


def _call(method: str, url: str, token: str, body: dict[str, Any] | None = None
          ) -> tuple[int, dict[str, Any]]:
    import httpx

    try:
        r = httpx.request(method, url, json=body, timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise CliError(f"the gateway at {url} did not answer: {exc}", code=EXIT_FAILED) from exc
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": {"message": r.text[:300]}}
    return r.status_code, doc if isinstance(doc, dict) else {}


def _refused(status: int, doc: dict[str, Any]) -> CliError:
    err = doc.get("error") or {}
    message = str(err.get("message") or f"HTTP {status}")
    # bad input (ours) is 2; the gateway or its store failing is 1
    return CliError(message, code=2 if 400 <= status < 500 else EXIT_FAILED)


def _unknown(kind: str, name: str, known: dict[str, list[str]]) -> CliError:
    names = ", ".join(known.get(kind) or []) or "none"
    return CliError(f"no {kind} named {name!r} (valid {kind} names: {names}); --create to "
                    "create its breaker anyway")


def run(args: argparse.Namespace) -> int:
    base, token = _target(args)
    action = getattr(args, "breakers_action", None) or "list"
    if action == "list":
        status, doc = _call("GET", f"{base}/admin/breakers", token)
        if status != 200:
            raise _refused(status, doc)
        print(json.dumps(doc, indent=2) if getattr(args, "json", False) else format_list(doc))
        return 0
    kind = next(k for k in _KINDS if getattr(args, k, None))
    name = str(getattr(args, kind))
    key = f"{kind}:{name}"
    body: dict[str, Any] = {"action": ACTIONS[action], "reason": args.reason or
                            f"operator: surefoot breakers {action}"}
    if args.create:
        body["create"] = True
    status, doc = _call("POST", f"{base}/admin/breakers/{key}", token, body)
    if status == 404 and "known" in (doc.get("error") or {}):
        raise _unknown(kind, name, doc["error"]["known"])
    if status != 200:
        raise _refused(status, doc)
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2))
    else:
        st = doc.get("status") or {}
        print(f"{key}: {st.get('state')}" + ("" if doc.get("changed") else " (unchanged)"))
    return 0


def format_list(doc: dict[str, Any]) -> str:
    rows = doc.get("breakers") or []
    lines = [f"{'BREAKER':<40}{'STATE':<15}{'OPENS':<7}REASON"]
    lines += [f"{b['key']:<40}{b['state']:<15}{b.get('opens', 0)!s:<7}{b.get('reason') or ''}"
              for b in rows]
    if not rows:
        lines.append("(no breaker has been written yet: every one is closed)")
    known = doc.get("known") or {}
    for kind in _KINDS:
        lines.append(f"{kind}s: {', '.join(known.get(kind) or []) or 'none'}")
    if doc.get("stale"):
        lines.append("redis is not answering: this is the gateway's last view")
    return "\n".join(lines)

"""What ``surefoot up`` keeps on disk beside Redis, in its state directory.

- The operator's hand on the breakers: a forced-open revision or a forced-closed node must
  outlive the Redis that holds it, even one that comes back empty. :func:`file_breakers` keeps
  them in ``forced.json`` (``knative.breakers.DurableBreakers`` over a file); the embedded Redis
  runs its ``restore`` while it still refuses every other client, and its ``sync`` restores an
  external Redis found empty at its next pass. Quarantined nodes need no copy here: their
  durable home is the platform's node label, from which the functions' sweep re-admits them.
- The events the broker gave up on: a JSON-lines dead-letter file (:class:`DeadLetterLog`
  reads it for ``surefoot status``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knative.breakers import BreakerRegistrySettings, DurableBreakers, FileHome


def file_breakers(path: Path, settings: BreakerRegistrySettings) -> DurableBreakers:
    """The forced breakers of the Redis ``settings`` names, mirrored in the JSON file
    ``path``."""
    return DurableBreakers(FileHome(path), settings)


DEAD_LETTER_FILE = "dead-letters.jsonl"


def dead_letter_path(state_dir: Path) -> Path:
    """Where the broker of ``surefoot up`` keeps the events it gave up on (one structured
    CloudEvent per line, with Knative's ``knativeerror*`` extensions saying where and why)."""
    return state_dir / DEAD_LETTER_FILE


class DeadLetterLog:
    """Reads the broker's dead-letter file of ``surefoot up``: how many, and the last few.

    The file outlives Redis and the run (it is the broker's durable record of what no
    subscriber accepted); ``surefoot status`` and the drill read it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"unreadable": line[:200]}
            out.append(doc if isinstance(doc, dict) else {"unreadable": line[:200]})
        return out

    def describe(self, last: int = 5) -> dict[str, Any]:
        """``{"path", "count", "last": [{id, type, subject, dest, code, reason}]}``."""
        rows = self.rows()
        return {"path": str(self.path), "count": len(rows),
                "last": [_dead_letter_row(r) for r in rows[-last:]] if last > 0 else []}


def _dead_letter_row(doc: dict[str, Any]) -> dict[str, Any]:
    import base64

    why = ""
    raw = doc.get("knativeerrordata")
    if isinstance(raw, str):
        try:
            why = base64.b64decode(raw).decode("utf-8", "replace")
        except ValueError:
            why = raw
        try:
            parsed = json.loads(why)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                why = parsed["error"]
        except ValueError:
            pass
    return {"id": doc.get("id"), "type": doc.get("type"), "subject": doc.get("subject"),
            "time": doc.get("time"), "dest": doc.get("knativeerrordest"),
            "code": doc.get("knativeerrorcode"), "reason": " ".join(why.split())[:200],
            **({"unreadable": doc["unreadable"]} if "unreadable" in doc else {})}

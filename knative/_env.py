"""Typed values from ``SUREFOOT_*`` environment variables, shared by the settings classes."""

from __future__ import annotations

from typing import Any


def convert(kind: str, raw: str) -> Any:
    """``raw`` as the dataclass field type named ``kind``; ValueError when it is not one."""
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)
    if "None" in kind and not raw:
        return None
    return raw

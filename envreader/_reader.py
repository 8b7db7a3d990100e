"""Typed values from ``SUREFOOT_*`` environment variables, shared by the settings classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
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


def env_values(cls: Any, prefix: str, env: Mapping[str, str],
               overrides: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Field values of the dataclass ``cls`` from ``<prefix><FIELD>`` variables, then the
    ``overrides`` that are not None; and one message per variable that does not convert."""
    values: dict[str, Any] = {}
    errors = []
    for f in fields(cls):
        key = f"{prefix}{f.name.upper()}"
        if key not in env:
            continue
        raw = env[key]
        try:
            values[f.name] = convert(str(f.type), raw)
        except ValueError:
            errors.append(f"{key}: {raw!r} is not a valid {f.type}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values, errors

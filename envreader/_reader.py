"""Typed values from ``SUREFOOT_*`` environment variables: the one parser every settings class
uses, so that a variable means the same thing in every package.

Types come from the settings dataclass's own annotations. ``bool`` is ``1/true/yes/on`` or
``0/false/no/off`` (any case); ``int`` and ``float`` are plain numbers; ``X | None`` is None for
an empty value; ``tuple[T, ...]`` is a comma-separated list of T. An empty value for a bool or
a number is as if the variable were not set (the default applies). Anything else is an error
that names the variable; every bad variable is reported at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class EnvError(ValueError):
    """One or more variables that do not convert; ``errors`` maps each variable to why."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


class _Unset:
    """An empty value for a type that has no empty form: the field keeps its default."""


UNSET = _Unset()


def parse(hint: Any, raw: str) -> Any:
    """``raw`` as a value of the type ``hint``; ``ValueError`` saying what was expected."""
    text = raw.strip()
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _parse_optional(hint, raw, text)
    if typing.get_origin(hint) is tuple:
        return _parse_tuple(hint, text)
    if hint is bool:
        return _parse_bool(raw, text)
    if hint is int or hint is float:
        return _parse_number(hint, raw, text)
    if hint is Path:
        return Path(text).expanduser() if text else UNSET
    return raw


def _parse_optional(hint: Any, raw: str, text: str) -> Any:
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)]
    if not text and len(inner) < len(args):
        return None
    return parse(inner[0], raw) if len(inner) == 1 else raw


def _parse_tuple(hint: Any, text: str) -> tuple[Any, ...]:
    args = typing.get_args(hint)
    item = args[0] if args else str
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(parse(item, p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of {item.__name__}") from None


def _parse_bool(raw: str, text: str) -> Any:
    low = text.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    if not text:
        return UNSET
    raise ValueError(f"{raw!r} is not a boolean (1/true/yes/on or 0/false/no/off)")


def _parse_number(hint: type[Any], raw: str, text: str) -> Any:
    if not text:
        return UNSET
    try:
        return hint(text)
    except ValueError:
        noun = "an integer" if hint is int else "a number"
        raise ValueError(f"{raw!r} is not {noun}") from None


def env_fields(
    cls: Any,
    prefix: str,
    env: Mapping[str, str],
    *,
    skip: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values for the fields of the dataclass ``cls`` from ``<prefix><FIELD>`` variables that
    are set, and one message per variable that does not convert (``{variable: why}``)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name.upper()}"
        if f.name in skipped or key not in env:
            continue
        try:
            value = parse(hints[f.name], env[key])
        except ValueError as exc:
            errors[key] = str(exc)
            continue
        if value is not UNSET:
            values[f.name] = value
    return values, errors


def env_values(
    cls: Any,
    prefix: str,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """:func:`env_fields`, then the ``overrides`` that are not None; errors as one message per
    bad variable (``"VARIABLE: why"``)."""
    values, errors = env_fields(cls, prefix, env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values, [f"{k}: {v}" for k, v in errors.items()]


def read_settings(
    cls: Any,
    prefix: str,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Field values of ``cls`` from the environment, then ``overrides`` that are not None;
    :class:`EnvError` naming every bad variable."""
    values, errors = env_fields(cls, prefix, env)
    if errors:
        raise EnvError(errors)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values


def read_value(env: Mapping[str, str], key: str, hint: Any, default: Any) -> Any:
    """One variable outside a settings class: its value as ``hint``, ``default`` when it is
    not set (or empty, for a type with no empty form); :class:`EnvError` when it is bad."""
    if key not in env:
        return default
    try:
        value = parse(hint, env[key])
    except ValueError as exc:
        raise EnvError({key: str(exc)}) from None
    return default if value is UNSET else value

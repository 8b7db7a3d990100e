"""The settings reader: one meaning of every type, every bad variable named at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from envreader import EnvError, env_values, parse, read_settings, read_value


@dataclass(frozen=True)
class _Example:
    flag: bool = False
    count: int = 3
    ratio: float = 0.5
    name: str = "x"
    limit: int | None = 7
    ports: tuple[int, ...] = ()
    home: Path = Path("/tmp")


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " on "])
def test_true_spellings(raw: str) -> None:
    assert parse(bool, raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "OFF"])
def test_false_spellings(raw: str) -> None:
    assert parse(bool, raw) is False


@pytest.mark.parametrize("raw", ["ture", "2", "enabled", "y"])
def test_anything_else_is_not_a_bool(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a boolean"):
        parse(bool, raw)


def test_reads_every_type_from_its_prefixed_variable() -> None:
    env = {
        "APP_FLAG": "yes", "APP_COUNT": "9", "APP_RATIO": "0.25", "APP_NAME": "n",
        "APP_LIMIT": "", "APP_PORTS": "80, 443", "APP_HOME": "/srv", "OTHER_COUNT": "1",
    }
    values = read_settings(_Example, "APP_", env)
    assert values == {
        "flag": True, "count": 9, "ratio": 0.25, "name": "n", "limit": None,
        "ports": (80, 443), "home": Path("/srv"),
    }


def test_empty_number_or_bool_keeps_the_default() -> None:
    assert read_settings(_Example, "APP_", {"APP_FLAG": "", "APP_COUNT": " "}) == {}


def test_every_bad_variable_is_named_at_once() -> None:
    env = {"APP_FLAG": "ture", "APP_COUNT": "many", "APP_PORTS": "80,x", "APP_RATIO": "1"}
    with pytest.raises(EnvError) as info:
        read_settings(_Example, "APP_", env)
    assert set(info.value.errors) == {"APP_FLAG", "APP_COUNT", "APP_PORTS"}
    assert "APP_FLAG: 'ture' is not a boolean" in str(info.value)
    assert "APP_COUNT: 'many' is not an integer" in str(info.value)


def test_overrides_that_are_not_none_win() -> None:
    values, errors = env_values(_Example, "APP_", {"APP_COUNT": "9"}, {"count": 4, "name": None})
    assert (values, errors) == ({"count": 4}, [])


def test_one_value_outside_a_settings_class() -> None:
    assert read_value({}, "APP_X", bool, True) is True
    assert read_value({"APP_X": "off"}, "APP_X", bool, True) is False
    assert read_value({"APP_X": ""}, "APP_X", float, 1.5) == 1.5
    with pytest.raises(EnvError, match="APP_X: 'maybe'"):
        read_value({"APP_X": "maybe"}, "APP_X", bool, True)

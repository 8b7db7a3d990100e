"""A replica's settings from an environment mapping, and its admission count, without a model."""

from __future__ import annotations

import pytest

from knative.serving import ServeSettings, SettingsError
from knative.serving._admission import Admission


def test_settings_read_the_mapping_they_are_given():
    s = ServeSettings.from_env({"SUREFOOT_PORT": "9000", "SUREFOOT_CUDA": "yes",
                                "SUREFOOT_GRACE_SECONDS": "2.5", "SUREFOOT_NODE": "n1"})
    assert (s.port, s.cuda, s.grace_seconds, s.node) == (9000, True, 2.5, "n1")


def test_flags_win_over_the_environment_and_none_is_no_flag():
    s = ServeSettings.from_env({"SUREFOOT_PORT": "9000", "SUREFOOT_REVISION": "r1"},
                               port=9100, revision=None)
    assert (s.port, s.revision) == (9100, "r1")


def test_the_environment_is_required():
    with pytest.raises(TypeError):
        ServeSettings.from_env()  # type: ignore[call-arg]


def test_every_bad_variable_is_named():
    with pytest.raises(SettingsError) as info:
        ServeSettings.from_env({"SUREFOOT_CUDA": "maybe", "SUREFOOT_PORT": "eighty"})
    assert "SUREFOOT_CUDA" in str(info.value)
    assert "SUREFOOT_PORT" in str(info.value)


def test_values_that_cannot_work_are_refused():
    with pytest.raises(SettingsError, match="max_tokens"):
        ServeSettings.from_env({"SUREFOOT_N_CTX": "256", "SUREFOOT_MAX_TOKENS": "256"})


def test_admission_counts_tickets_once_and_publishes_each_change():
    seen: list[tuple[int, int]] = []
    adm = Admission(2, lambda inflight, running: seen.append((inflight, running)))
    a, b = adm.try_admit(), adm.try_admit()
    assert a is not None
    assert b is not None
    assert adm.try_admit() is None
    a.start()
    a.start()
    assert (adm.inflight, adm.running) == (2, 1)
    a.release()
    a.release()
    b.release()
    b.start()  # a released ticket never starts
    assert (adm.inflight, adm.running) == (0, 0)
    assert seen == [(1, 0), (2, 0), (2, 1), (1, 0), (0, 0)]


def test_wait_idle_gives_up_at_the_deadline_of_its_clock():
    now = [100.0]

    def clock() -> float:
        now[0] += 10  # every reading after the first is past a 5 s deadline
        return now[0]

    adm = Admission(1, clock=clock)
    assert adm.wait_idle(5) is True  # nothing in flight
    ticket = adm.try_admit()
    assert ticket is not None
    assert adm.wait_idle(5) is False  # no real wait: the clock ran out
    ticket.release()
    assert adm.wait_idle(5) is True

"""The exactly-once claim (in-flight deliveries, failures, leases) and the settings."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import events as ev
from functions import (
    ACTED,
    DEFERRED,
    DUPLICATE,
    NOOP,
    Context,
    FunctionSettings,
    Outcome,
    PermanentFunctionError,
    SettingsError,
    TemporaryFunctionError,
    run_once,
)
from functions._once import handoffs, seen_key
from tests.functions._helpers import xid


def acted(ctx: Context, event: ev.Event) -> Outcome:
    reply = ctx.event("t", ev.NodeReady(node="n"))
    return Outcome("t", ACTED, "did it", reply=reply)


def test_a_loser_waits_for_the_winner_and_answers_its_reply(ctx: Context) -> None:
    event = xid("n", 79)
    started, release = threading.Event(), threading.Event()
    results: dict[str, Outcome] = {}

    def slow() -> Outcome:
        started.set()
        assert release.wait(5)
        return acted(ctx, event)

    t = threading.Thread(target=lambda: results.__setitem__("w", run_once("t", event, ctx, slow)))
    t.start()
    assert started.wait(5)
    calls: list[int] = []
    loser = threading.Thread(target=lambda: results.__setitem__(
        "l", run_once("t", event, ctx, lambda: (calls.append(1), acted(ctx, event))[1])))
    loser.start()
    release.set()
    t.join(5)
    loser.join(5)
    assert results["w"].status == ACTED
    assert results["l"].status == DUPLICATE
    assert results["l"].reply is not None
    assert results["w"].reply is not None
    assert results["l"].reply.id == results["w"].reply.id
    assert calls == []


def test_a_loser_takes_over_when_the_winner_fails(ctx: Context) -> None:
    event = xid("n", 79)
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> Outcome:
        started.set()
        assert release.wait(5)
        raise TemporaryFunctionError("api down")

    def winner() -> None:
        try:
            run_once("t", event, ctx, failing)
        except TemporaryFunctionError as exc:
            errors.append(exc)

    t = threading.Thread(target=winner)
    t.start()
    assert started.wait(5)
    out: list[Outcome] = []
    loser = threading.Thread(target=lambda: out.append(
        run_once("t", event, ctx, lambda: acted(ctx, event))))
    loser.start()
    release.set()
    t.join(5)
    loser.join(5)
    assert len(errors) == 1
    assert out[0].status == ACTED


def test_a_loser_hands_over_while_the_winner_runs_too_long(
        make_ctx: Callable[..., Context]) -> None:
    """A broker redelivers when its request timed out: refusing with 503 while the first
    delivery still works would make it give up on an event that is being handled."""
    ctx = make_ctx(inflight_wait_s=0.05)
    event = xid("n", 79)
    ctx.redis.set(seen_key(ctx, "t", event), "R:someone-else", px=60_000)
    out = run_once("t", event, ctx, lambda: acted(ctx, event))
    assert out.status == DEFERRED
    assert "being handled by another delivery" in out.reason
    assert handoffs(ctx) == [f"t|handoff|{seen_key(ctx, 't', event).rsplit(':', 1)[-1]}"]


def test_a_crashed_winner_blocks_only_until_its_lease_expires(ctx: Context) -> None:
    event = xid("n", 79)
    key = seen_key(ctx, "t", event)
    ctx.redis.set(key, "R:crashed", px=60_000)
    ctx.redis.pexpire(key, 1)  # the lease ran out
    assert run_once("t", event, ctx, lambda: acted(ctx, event)).status == ACTED


def test_permanent_failure_lets_a_replay_run_again(ctx: Context) -> None:
    event = xid("n", 79)

    def bad() -> Outcome:
        raise PermanentFunctionError("403")

    with pytest.raises(PermanentFunctionError):
        run_once("t", event, ctx, bad)
    assert run_once("t", event, ctx, lambda: acted(ctx, event)).status == ACTED


def test_claims_are_per_function_and_per_source(ctx: Context) -> None:
    event = xid("n", 79, id="same")
    other_source = ev.Event(type=event.type, source="/elsewhere", id="same", data=event.data)
    assert run_once("a", event, ctx, lambda: acted(ctx, event)).status == ACTED
    assert run_once("b", event, ctx, lambda: acted(ctx, event)).status == ACTED
    assert run_once("a", other_source, ctx, lambda: acted(ctx, event)).status == ACTED
    assert run_once("a", event, ctx, lambda: acted(ctx, event)).status == DUPLICATE


def test_noop_outcomes_are_remembered_too(ctx: Context) -> None:
    event = xid("n", 43)
    assert run_once("t", event, ctx, lambda: Outcome("t", NOOP, "benign")).status == NOOP
    again = run_once("t", event, ctx, lambda: Outcome("t", ACTED, "x"))
    assert again.status == DUPLICATE
    assert again.reply is None
    assert "benign" in again.reason


def test_the_record_expires_after_the_dedupe_ttl(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(dedupe_ttl_s=3600)
    event = xid("n", 79)
    run_once("t", event, ctx, lambda: acted(ctx, event))
    ttl = ctx.redis.pttl(seen_key(ctx, "t", event))
    assert 3_500_000 < ttl <= 3_600_000


def test_long_handlers_keep_their_claim(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(lease_s=30)
    event = xid("n", 79)
    key = seen_key(ctx, "t", event)
    seen: list[tuple[dict[str, str], int]] = []

    def long() -> Outcome:
        held = ctx.leases.held()
        ctx.redis.pexpire(key, 50)  # as if most of the lease had passed
        ctx.leases.renew_all()  # what the keeper thread does every third of the lease
        seen.append((held, int(ctx.redis.pttl(key))))
        return acted(ctx, event)

    assert run_once("t", event, ctx, long).status == ACTED
    held, ttl = seen[0]
    assert key in held
    assert ttl > 29_000
    assert ctx.leases.held() == {}  # dropped once finished
    ctx.redis.set("other", "x")
    ctx.leases.hold("other", "R:mine")
    ctx.leases.renew_all()  # a claim someone else holds now is not renewed
    assert ctx.redis.pttl("other") == -1


# --- settings -----------------------------------------------------------------------------


def test_settings_from_env() -> None:
    s = FunctionSettings.from_env({
        "SUREFOOT_SERVICE": "llm", "SUREFOOT_RESTORE_STEPS": "20, 60,100",
        "SUREFOOT_DRY_RUN": "yes", "SUREFOOT_MAX_QUARANTINED_PERCENT": "12.5",
        "SUREFOOT_CRASH_THRESHOLD": "5", "SUREFOOT_REDIS_URL": "redis://r:6379/0",
    }, max_quarantined=4)
    assert s.service == "llm"
    assert s.restore_steps == (20, 60, 100)
    assert s.dry_run
    assert s.max_quarantined_percent == 12.5
    assert s.crash_threshold == 5
    assert s.max_quarantined == 4


def test_settings_report_every_bad_variable() -> None:
    with pytest.raises(SettingsError) as info:
        FunctionSettings.from_env({"SUREFOOT_CRASH_THRESHOLD": "x", "SUREFOOT_DRY_RUN": "maybe",
                                   "SUREFOOT_NODE_HOLD_S": "soon"})
    assert set(info.value.errors) == {"SUREFOOT_CRASH_THRESHOLD", "SUREFOOT_DRY_RUN",
                                      "SUREFOOT_NODE_HOLD_S"}


def test_settings_report_every_bad_value() -> None:
    with pytest.raises(SettingsError) as info:
        FunctionSettings(primary_revision="a", fallback_revision="a", restore_steps=(50, 10),
                         max_quarantined=0, max_quarantined_percent=0, platform="mesos",
                         optout_label="nolabel", snapshot_replicas="some",
                         only_function="nope", fallback_max_scale=2)
    assert set(info.value.errors) == {
        "fallback_revision", "restore_steps", "max_quarantined", "max_quarantined_percent",
        "platform", "optout_label", "snapshot_replicas", "only_function", "fallback_max_scale"}
    with pytest.raises(SettingsError, match="last step"):
        FunctionSettings(restore_steps=(10, 50))

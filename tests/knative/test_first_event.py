"""A try that sends no first event, against real HTTP upstreams (tests.knative.stub_upstream):
a stream whose replica answers nothing goes to another replica once its first-event timeout
is over, long before the try timeout; an answer read whole keeps the try timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from knative.breakers import BreakerRegistry, BreakerRegistrySettings, BreakerSettings
from knative.gateway import gateway_of
from surefoot.cli import main
from tests.knative.stub_upstream import StubUpstream
from tests.knative.test_gateway import BODY, make, post, sse_events, table


@pytest.fixture
def stubs() -> Iterator[dict[str, StubUpstream]]:
    s = {n: StubUpstream(name=n).start() for n in ("a", "b", "c", "fb")}
    yield s
    for stub in s.values():
        stub.stop()


@pytest.fixture
def registry(redis_url: str) -> Iterator[BreakerRegistry]:
    policy = BreakerSettings(window_size=5, minimum_calls=1, wait_in_open=30.0)
    reg = BreakerRegistry(BreakerRegistrySettings(redis_url=redis_url, policy=policy))
    assert reg.wait_ready()
    yield reg
    reg.close()


def test_a_stream_with_no_first_event_goes_to_another_replica(
        stubs: dict[str, StubUpstream], registry: BreakerRegistry) -> None:
    stubs["a"].mode = "hang"
    _, client, _ = make(table(stubs, "a"), registry, try_timeout=20.0, deadline=30.0,
                        first_event_timeout_min=0.2, first_event_timeout_max=0.3)
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True})
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Replica"] == "fb"
    events = sse_events(r.data)
    assert events[-1] == "[DONE]"
    assert all("error" not in json.loads(e) for e in events[:-1])
    assert 0.2 <= took < 5, took
    m = gateway_of(client.application).metrics
    assert m.resumes("first_event") == 1
    assert m.get("upstream_first_event_timeout") == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
            registry.view().get("replica:a") is None
            or registry.view()["replica:a"].state != "open"):
        time.sleep(0.02)
    assert registry.view()["replica:a"].state == "open"


def test_an_answer_read_whole_keeps_the_try_timeout(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "hang"
    _, client, _ = make(table(stubs, "a", fallback=False), try_timeout=0.4, deadline=0.5,
                        first_event_timeout_min=0.1, first_event_timeout_max=0.1)
    r = post(client)
    assert r.status_code == 504
    assert r.json["error"]["type"] == "upstream_timeout"


@pytest.mark.parametrize(("var", "value"), [
    ("SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MAX", "-3"),
    ("SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MIN", "later"),
    ("SUREFOOT_GATEWAY_FIRST_EVENT_FACTOR", "2000"),
])
def test_the_gateway_command_names_a_bad_first_event_variable(
        var: str, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(var, value)
    assert main(["gateway", "--target", "p=100=http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert var in err, err
    assert len(err.splitlines()) == 1, err


def test_a_stream_frozen_between_its_head_and_first_event_goes_to_another_replica(
        stubs: dict[str, StubUpstream]) -> None:
    """The head came, the first event did not: the stall timeout bounds it, not the try's."""
    stubs["a"].mode, stubs["a"].die_after = "stall_mid_stream", 0
    _, client, _ = make(table(stubs, "a"), try_timeout=20.0, deadline=30.0,
                        stall_timeout_min=0.2, stall_timeout_max=0.3)
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True})
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Replica"] == "fb"
    assert sse_events(r.data)[-1] == "[DONE]"
    assert 0.2 <= took < 5, took
    assert gateway_of(client.application).metrics.resumes("first_event") == 1

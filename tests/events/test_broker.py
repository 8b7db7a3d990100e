"""The local broker: trigger filters, config files, fan-out over real HTTP, replies, dead
letters, back-pressure."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import events as ev

XID = ev.build(ev.GpuXid(node="n1", xid=79, severity="fatal", action="reboot", fatal=True),
               source="/surefoot/gpu/n1", id="x-1", extensions={"cluster": "east"})
READY = ev.build(ev.PodReady(namespace="default", pod="p1"), source="/surefoot/pods", id="r-1")


@pytest.mark.parametrize(
    ("attributes", "filters", "xid", "ready"),
    [
        ({}, [], True, True),
        ({"type": "dev.surefoot.gpu.xid"}, [], True, False),
        ({"type": "dev.surefoot.gpu.xid", "subject": "node/n2"}, [], False, False),
        ({"cluster": "east"}, [], True, False),
        ({}, [{"prefix": {"type": "dev.surefoot.gpu."}}], True, False),
        ({}, [{"prefix": {"type": "dev.surefoot."}}], True, True),
        ({}, [{"suffix": {"type": ".ready"}}], False, True),
        ({}, [{"exact": {"subject": "node/n1"}}], True, False),
        ({}, [{"not": {"prefix": {"type": "dev.surefoot.gpu."}}}], False, True),
        ({}, [{"any": [{"exact": {"id": "x-1"}}, {"exact": {"id": "r-1"}}]}], True, True),
        ({}, [{"all": [{"prefix": {"type": "dev.surefoot."}}, {"exact": {"cluster": "east"}}]}],
         True, False),
        ({}, [{"prefix": {"nosuch": "x"}}], False, False),
        # filters win over filter.attributes, as in Knative
        ({"type": "nothing"}, [{"prefix": {"type": "dev.surefoot.pod."}}], False, True),
    ],
)
def test_filters(attributes: dict[str, str], filters: list[dict[str, Any]], xid: bool,
                 ready: bool) -> None:
    assert ev.matches(XID, attributes, filters) is xid
    assert ev.matches(READY, attributes, filters) is ready


def test_trigger_from_flat_dict_and_knative_manifest() -> None:
    flat = ev.trigger_from_dict({
        "name": "gpu", "subscriber": "http://127.0.0.1:1/fn",
        "filters": [{"prefix": {"type": "dev.surefoot.gpu."}}],
        "delivery": {"retry": 2, "backoffDelay": "PT0.5S", "backoffPolicy": "linear",
                     "deadLetterSink": {"uri": "/tmp/dead.jsonl"}},
    })
    assert flat.retry == ev.RetryPolicy(retries=2, backoff_delay_s=0.5, backoff_policy="linear")
    assert flat.dead_letter == "/tmp/dead.jsonl"
    manifest = ev.trigger_from_dict({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "pods"},
        "spec": {"broker": "default", "filter": {"attributes": {"type": "dev.surefoot.pod.ready"}},
                 "subscriber": {"uri": "http://127.0.0.1:1/"}},
    } | {"spec": {"filter": {"attributes": {"type": "dev.surefoot.pod.ready"}},
                  "subscriber": {"uri": "http://127.0.0.1:1/"}}})
    assert manifest.name == "pods"
    assert manifest.attributes == {"type": "dev.surefoot.pod.ready"}
    assert manifest.matches(READY)
    assert not manifest.matches(XID)


def test_trigger_errors_are_reported_at_once() -> None:
    with pytest.raises(ev.ConfigError) as info:
        ev.parse_triggers({"triggers": [
            {"subscriber": "ftp://x", "filters": [{"cesql": "type = 'x'"}, {"bogus": {}}],
             "delivery": {"retry": -1, "backoffDelay": "soon", "backoffPolicy": "random",
                          "timeout": "PT1S"}, "extra": 1},
            {"name": "b", "subscriber": {"ref": {"kind": "Service", "name": "fn"}},
             "filter": {"attributes": {"type": 5}}},
            {"name": "b", "subscriber": "http://127.0.0.1:1/"},
        ]})
    errors = info.value.errors
    assert set(errors) == {
        "triggers[0].name", "triggers[0].subscriber", "triggers[0].filters[0].cesql",
        "triggers[0].filters[1]", "triggers[0].delivery.retry", "triggers[0].delivery.backoffDelay",
        "triggers[0].delivery.backoffPolicy", "triggers[0].delivery.timeout", "triggers[0].extra",
        "triggers[1].subscriber", "triggers[1].filter.attributes", "triggers[2].name",
    }


def test_load_triggers_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(
        "triggers:\n"
        "  - name: gpu\n    subscriber: http://127.0.0.1:9/gpu\n"
        "    filters:\n      - prefix: {type: dev.surefoot.gpu.}\n"
        "  - name: all\n    subscriber: http://127.0.0.1:9/all\n"
    )
    assert [t.name for t in ev.load_triggers(str(path))] == ["gpu", "all"]
    multi = tmp_path / "manifests.yaml"
    multi.write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: a}\n"
        "spec: {subscriber: {uri: 'http://127.0.0.1:9/'}}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n---\n"
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: b}\n"
        "spec: {subscriber: {uri: 'http://127.0.0.1:9/'}}\n"
    )
    assert [t.name for t in ev.load_triggers(str(multi))] == ["a", "b"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("triggers: [\n")
    with pytest.raises(ev.ConfigError, match="not valid YAML"):
        ev.load_triggers(str(bad))
    with pytest.raises(ev.ConfigError, match="cannot read"):
        ev.load_triggers(str(tmp_path / "missing.yaml"))


class Subscriber:
    """A real HTTP subscriber recording what it gets; ``answer`` decides each response."""

    def __init__(self, answer: Callable[[ev.Event], ev.Event | None] | None = None,
                 status: int | None = None) -> None:
        self.events: list[ev.Event] = []
        self.cond = threading.Condition()
        self.status = status

        def handler(event: ev.Event) -> ev.Event | None:
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()
            if self.status is not None:
                raise ev.TemporaryError("configured to fail")
            return answer(event) if answer else None

        self.server = ev.HttpServer(ev.create_app(ev.ReceiverSettings(strict_types=False),
                                                  handler)).start()
        self.url = self.server.url + "/"

    def wait(self, n: int, timeout: float = 5.0) -> list[ev.Event]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout=timeout)
            return list(self.events)


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(*a: Any, **kw: Any) -> Subscriber:
        s = Subscriber(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.server.stop()


def no_sleep_sender(**settings: Any) -> ev.Sender:
    return ev.Sender(ev.SenderSettings(**settings), sleep=lambda s: None)


def test_fan_out_over_real_http(subscribers: Callable[..., Subscriber]) -> None:
    gpu, pods, everything = subscribers(), subscribers(), subscribers()
    triggers = [
        ev.Trigger("gpu", gpu.url, filters=({"prefix": {"type": "dev.surefoot.gpu."}},)),
        ev.Trigger("pods", pods.url, attributes={"type": "dev.surefoot.pod.ready"}),
        ev.Trigger("all", everything.url),
    ]
    with ev.BrokerServer(triggers=triggers) as broker, ev.Sender() as client:
        assert client.send(XID, broker.url + "/").status == 202
        assert client.send(READY, broker.url + "/").status == 202
        assert broker.broker.wait_idle(5)
        listing = httpx.get(broker.url + "/triggers").json()
        health = httpx.get(broker.url + "/healthz").json()
    assert gpu.events == [XID]
    assert pods.events == [READY]
    assert sorted(e.id for e in everything.events) == ["r-1", "x-1"]
    assert [t["name"] for t in listing["triggers"]] == ["gpu", "pods", "all"]
    assert health["stats"]["delivered"] == 4


def test_ingress_rejects_bad_events_with_400(subscribers: Callable[..., Subscriber]) -> None:
    with ev.BrokerServer() as broker:
        resp = httpx.post(broker.url + "/", headers={"ce-specversion": "1.0",
                                                     "ce-type": "dev.surefoot.gpu.xid",
                                                     "content-type": "application/json"},
                          content=b'{"node": "n1"}')
    assert resp.status_code == 400
    assert set(resp.json()["fields"]) >= {"id", "source", "data.xid"}


def test_failed_delivery_is_retried_then_dead_lettered(
    subscribers: Callable[..., Subscriber], tmp_path: Path
) -> None:
    failing = subscribers(status=503)
    dead = tmp_path / "dead.jsonl"
    trig = ev.Trigger("fails", failing.url, retry=ev.RetryPolicy(retries=2),
                      dead_letter=str(dead))
    with ev.Broker(sender=no_sleep_sender()) as broker:
        broker.add_trigger(trig)
        (result,) = broker.deliver_now(XID)
    assert not result.ok
    assert result.attempts == 3
    assert result.dead_lettered
    assert len(failing.events) == 3
    (letter,) = ev.read_dead_letters(str(dead))
    assert letter.id == "x-1"
    assert letter.extensions["knativeerrordest"] == failing.url
    assert letter.extensions["knativeerrorcode"] == "503"


def test_broker_dead_letter_used_without_trigger_override(
    subscribers: Callable[..., Subscriber], tmp_path: Path
) -> None:
    failing = subscribers(status=503)
    dead = tmp_path / "broker-dead.jsonl"
    sender = no_sleep_sender(retry=ev.RetryPolicy(retries=0), dead_letter=str(dead))
    with ev.Broker(sender=sender) as broker:
        broker.add_trigger(ev.Trigger("t", failing.url))
        assert broker.publish(XID) == 1
        assert broker.wait_idle(5)
        assert broker.stats["dead_lettered"] == 1
    assert [e.id for e in ev.read_dead_letters(str(dead))] == ["x-1"]


def test_replies_re_enter_the_broker(subscribers: Callable[..., Subscriber]) -> None:
    def trip(event: ev.Event) -> ev.Event:
        return ev.build(ev.BreakerOpened(scope="node", name="n1", cause_event_id=event.id),
                        source="/fn/trip_breaker", id="b-1")

    fn = subscribers(trip)
    watcher = subscribers()
    with ev.Broker() as broker:
        broker.add_trigger(ev.Trigger("fn", fn.url, attributes={"type": "dev.surefoot.gpu.xid"}))
        broker.add_trigger(ev.Trigger("watch", watcher.url,
                                      attributes={"type": "dev.surefoot.breaker.opened"}))
        broker.publish(XID)
        (opened,) = watcher.wait(1)
        assert broker.wait_idle(5)
    assert opened.id == "b-1"
    assert opened.extensions["knativebrokerttl"] == "254"
    assert broker.stats["replies"] == 1


def test_reply_loops_stop_at_the_hop_limit(subscribers: Callable[..., Subscriber]) -> None:
    echo = subscribers(lambda e: e)  # replies with the event itself: a loop
    with ev.Broker() as broker:
        broker.add_trigger(ev.Trigger("echo", echo.url))
        broker.publish(XID.with_extensions(knativebrokerttl="4"))
        echo.wait(4)
        assert broker.wait_idle(5)
    assert len(echo.events) == 4  # ttl 4 -> deliveries with ttl 4, 3, 2, 1


def test_backpressure_503_when_too_much_is_pending(subscribers: Callable[..., Subscriber]) -> None:
    slow_gate = threading.Event()

    def slow(event: ev.Event) -> None:
        slow_gate.wait(5)
        return None

    sub = subscribers(slow)
    settings = ev.BrokerSettings(workers=1, max_pending=1)
    with ev.BrokerServer(settings, triggers=[ev.Trigger("t", sub.url)]) as broker:
        first = httpx.post(broker.url + "/", headers=ev.to_binary(XID).headers,
                           content=ev.to_binary(XID).body)
        second = httpx.post(broker.url + "/", headers=ev.to_binary(READY).headers,
                            content=ev.to_binary(READY).body)
        slow_gate.set()
        assert broker.broker.wait_idle(5)
    assert first.status_code == 202
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"


def test_knative_apiserver_event_is_mapped_at_ingress(
    subscribers: Callable[..., Subscriber]
) -> None:
    sub = subscribers()
    pod = {"kind": "Pod", "metadata": {"name": "p1", "namespace": "default", "uid": "u1"},
           "spec": {"nodeName": "n1"}}
    with ev.BrokerServer(triggers=[ev.Trigger("t", sub.url, attributes={
            "type": "dev.surefoot.pod.deleted"})]) as broker:
        resp = httpx.post(broker.url + "/", content=json.dumps(pod), headers={
            "ce-specversion": "1.0", "ce-id": "k-1", "ce-source": "https://api",
            "ce-type": "dev.knative.apiserver.resource.delete",
            "content-type": "application/json"})
        assert resp.status_code == 202
        (got,) = sub.wait(1)
    assert got.type == "dev.surefoot.pod.deleted"
    assert got.subject == "pod/default/p1"


def test_remove_trigger(subscribers: Callable[..., Subscriber]) -> None:
    sub = subscribers()
    with ev.Broker() as broker:
        broker.add_trigger(ev.Trigger("t", sub.url))
        assert broker.remove_trigger("t")
        assert not broker.remove_trigger("t")
        assert broker.publish(XID) == 0
    assert broker.stats["unmatched"] == 1


def test_broker_dead_letters_what_exhausts_its_retries_over_http(tmp_path: Path) -> None:
    """As ``surefoot up`` runs it: the broker's own dead-letter file keeps an event that its
    subscriber kept refusing, with the subscriber's reason."""
    import base64

    from flask import Flask, jsonify

    app = Flask("refusing")

    @app.post("/fn")
    def refuse() -> Any:
        resp = jsonify({"error": "temporary failure: the platform did not answer"})
        resp.status_code = 503
        return resp

    path = tmp_path / "dead-letters.jsonl"
    sender = ev.SenderSettings(dead_letter=str(path),
                               retry=ev.RetryPolicy(retries=2, backoff_delay_s=0.0))
    with ev.HttpServer(app) as sub, ev.BrokerServer(ev.BrokerSettings(sender=sender)) as b:
        b.broker.add_trigger(ev.Trigger(name="t", subscriber=f"{sub.url}/fn"))
        event = ev.build(ev.NodeReady(node="n1"), source="/test", id="lost-1")
        httpx.post(b.url, content=ev.to_binary(event).body,
                   headers=ev.to_binary(event).headers).raise_for_status()
        assert b.broker.wait_idle(10)
        assert b.broker.stats["dead_lettered"] == 1
    (kept,) = ev.read_dead_letters(str(path))
    assert kept.id == "lost-1"
    assert kept.extensions["knativeerrorcode"] == "503"
    assert b"the platform did not answer" in base64.b64decode(kept.extensions["knativeerrordata"])

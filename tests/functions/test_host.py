"""The functions host over HTTP: per-function paths, dispatch by type, Knative-style replies,
malformed events, dead letters, the admin API, and the chain through the local broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient

import events as ev
from functions import (
    ROUTES,
    Context,
    FunctionsServer,
    create_app,
    functions_for,
    host_of,
    triggers,
)
from knative.breakers import node_key, revision_key
from tests.conftest import FakeTime
from tests.functions._helpers import Sink, closed, lost, oom, opened, traffic_of, xid
from tests.kube_fake import FakeKubeServer


def client_for(ctx: Context) -> FlaskClient:
    app = create_app(ctx.settings, ctx)
    app.testing = True
    return app.test_client()


def post(client: FlaskClient, path: str, event: ev.Event, structured: bool = False) -> Any:
    msg = ev.to_structured(event) if structured else ev.to_binary(event)
    return client.post(path, data=msg.body, headers=dict(msg.headers))


def reply_of(resp: Any) -> ev.Event:
    return ev.from_http(dict(resp.headers), resp.get_data())


def test_function_path_replies_with_a_binary_cloudevent(cluster: FakeKubeServer,
                                                       ctx: Context) -> None:
    c = client_for(ctx)
    resp = post(c, "/trip_breaker", xid("gpu-1", 79))
    assert resp.status_code == 200
    assert resp.headers["ce-type"] == ev.BreakerOpened.TYPE  # binary mode
    assert resp.headers["Surefoot-Outcome"] == "acted"
    assert resp.headers["Surefoot-Function"] == "trip_breaker"
    reply = reply_of(resp)
    assert reply.subject == "node/gpu-1"
    assert reply.source == "/surefoot/functions/trip_breaker"
    assert ctx.breakers.status(node_key("gpu-1")).state == "open"


def test_structured_mode_is_accepted(cluster: FakeKubeServer, ctx: Context) -> None:
    resp = post(client_for(ctx), "/quarantine_node", lost("gpu-1"), structured=True)
    assert resp.status_code == 200
    assert resp.headers["ce-type"] == ev.NodeQuarantined.TYPE


def test_noop_is_202_with_the_reason(cluster: FakeKubeServer, ctx: Context) -> None:
    resp = post(client_for(ctx), "/quarantine_node", xid("gpu-1", 43))
    assert resp.status_code == 202
    assert resp.get_data() == b""
    assert resp.headers["Surefoot-Outcome"] == "noop"
    assert "not a fatal fault" in resp.headers["Surefoot-Reason"]


def test_redelivery_over_http_answers_the_same_reply(cluster: FakeKubeServer,
                                                     ctx: Context) -> None:
    c = client_for(ctx)
    event = xid("gpu-1", 79)
    first = post(c, "/trip_breaker", event)
    again = post(c, "/trip_breaker", event)
    assert again.status_code == 200
    assert again.headers["Surefoot-Outcome"] == "duplicate"
    assert again.headers["ce-id"] == first.headers["ce-id"]


def test_malformed_event_names_every_bad_field(cluster: FakeKubeServer, ctx: Context) -> None:
    c = client_for(ctx)
    resp = c.post("/trip_breaker", data=json.dumps({"node": 7, "xid": "x"}), headers={
        "ce-specversion": "1.0", "ce-type": ev.GpuXid.TYPE, "ce-source": "/t",
        "content-type": "application/json"})
    assert resp.status_code == 400
    fields = resp.get_json()["fields"]
    assert {"id", "data.node", "data.xid", "data.severity", "data.action",
            "data.fatal"} <= set(fields)


def test_unknown_type_and_wrong_path(cluster: FakeKubeServer, ctx: Context) -> None:
    c = client_for(ctx)
    unknown = c.post("/trip_breaker", data=b"{}", headers={
        "ce-specversion": "1.0", "ce-type": "com.example.nope", "ce-source": "/t",
        "ce-id": "1", "content-type": "application/json"})
    assert unknown.status_code == 400
    assert "type" in unknown.get_json()["fields"]
    wrong = post(c, "/reroute_traffic", xid("gpu-1", 79))
    assert wrong.status_code == 400
    assert "reroute_traffic does not handle" in wrong.get_json()["fields"]["type"]


def test_not_a_cloudevent_is_415_and_bad_json_400(cluster: FakeKubeServer, ctx: Context) -> None:
    c = client_for(ctx)
    assert c.post("/trip_breaker", data=b"hi", headers={"content-type": "text/plain"}
                  ).status_code == 415
    bad = c.post("/trip_breaker", data=b"{not json", headers={
        "content-type": "application/cloudevents+json"})
    assert bad.status_code == 400
    assert "body" in bad.get_json()["fields"]


def test_temporary_failure_is_503_permanent_422(cluster: FakeKubeServer, ctx: Context) -> None:
    c = client_for(ctx)
    cluster.fail_next("/apis/serving.knative.dev/v1/namespaces/default/services/surefoot", 500)
    resp = post(c, "/reroute_traffic", opened())
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    cluster.fail_next("/apis/serving.knative.dev/v1/namespaces/default/services/surefoot", 403)
    resp = post(c, "/reroute_traffic", opened())
    assert resp.status_code == 422
    assert "RBAC" in resp.get_json()["error"]


def test_dispatch_by_type_runs_every_function_for_it(cluster: FakeKubeServer, ctx: Context,
                                                     sink: Sink) -> None:
    resp = post(client_for(ctx), "/", lost("gpu-2"))
    assert resp.status_code == 200
    assert resp.headers["Surefoot-Function"] == "trip_breaker,quarantine_node"
    assert resp.headers["ce-type"] == ev.BreakerOpened.TYPE
    assert sink.types() == [ev.NodeQuarantined.TYPE]  # the second reply went to the sink
    assert ctx.breakers.status(node_key("gpu-2")).state == "open"


def test_dispatch_of_an_unrouted_type_is_a_noop(cluster: FakeKubeServer, ctx: Context) -> None:
    event = ev.build(ev.PodReady(namespace="default", pod="p"), source="/t")
    resp = post(client_for(ctx), "/", event)
    assert resp.status_code == 202
    assert resp.headers["Surefoot-Outcome"] == "noop"


def test_dispatch_maps_apiserver_events(cluster: FakeKubeServer, make_ctx: Callable[..., Context]
                                        ) -> None:
    asked: list[str] = []

    def replica(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return httpx.Response(201, json={"id": "ck-1", "seconds": 0.1,
                                         "revision": "surefoot-primary"})

    ctx = make_ctx(transport=httpx.MockTransport(replica))
    pod = cluster.get("pods", "primary-1")
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    event = ev.Event(type="dev.knative.apiserver.resource.update", source="/apiserver",
                     id="k-1", data=pod)
    resp = post(client_for(ctx), "/", event)
    assert resp.status_code == 200, resp.get_data()
    assert resp.headers["ce-type"] == ev.CheckpointSaved.TYPE
    assert asked == [pod["status"]["podIP"]]


def test_routes_table_and_triggers() -> None:
    assert functions_for(ev.GpuXid.TYPE) == ["trip_breaker", "quarantine_node"]
    assert functions_for(ev.KNATIVE_PING) == list(ROUTES)
    assert functions_for(ev.GpuXid.TYPE, "quarantine_node") == ["quarantine_node"]
    ts = triggers("http://127.0.0.1:9/")
    assert len(ts) == sum(len(t) for t in ROUTES.values())
    assert len({t.name for t in ts}) == len(ts)
    xid_targets = sorted(t.subscriber for t in ts if t.attributes == {"type": ev.GpuXid.TYPE})
    assert xid_targets == ["http://127.0.0.1:9/quarantine_node", "http://127.0.0.1:9/trip_breaker"]


def test_only_one_function(cluster: FakeKubeServer, make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(only_function="trip_breaker")
    c = client_for(ctx)
    resp = post(c, "/", lost("gpu-1"))
    assert resp.headers["Surefoot-Function"] == "trip_breaker"
    assert post(c, "/quarantine_node", lost("gpu-1")).status_code == 404
    assert list(c.get("/functions").get_json()["functions"]) == ["trip_breaker"]


def test_healthz_and_functions(ctx: Context) -> None:
    c = client_for(ctx)
    assert c.get("/healthz").get_json()["redis"] == "ok"
    fns = c.get("/functions").get_json()["functions"]
    assert fns["reroute_traffic"]["path"] == "/reroute_traffic"


def test_dead_letters_are_kept(ctx: Context) -> None:
    c = client_for(ctx)
    event = xid("gpu-1", 79).with_extensions(knativeerrordest="http://x/trip_breaker",
                                             knativeerrorcode="503")
    assert post(c, "/dead-letter", event).status_code == 202
    assert c.post("/dead-letter", data=b"garbage", headers={"content-type": "text/plain"}
                  ).status_code == 202
    rows = c.get("/dead-letter").get_json()["dead_letters"]
    assert "unparsed" in rows[0]
    assert rows[1]["event"]["id"] == event.id
    assert rows[1]["error"]["knativeerrorcode"] == "503"
    assert c.get("/dead-letter?limit=x").status_code == 400


def test_admin_release_validates_and_releases(cluster: FakeKubeServer, ctx: Context) -> None:
    c = client_for(ctx)
    post(c, "/quarantine_node", lost("gpu-1"))
    assert c.get("/admin/quarantine").get_json()["quarantined"][0]["node"] == "gpu-1"
    bad = c.post("/admin/release", json={"node": "", "reason": 3})
    assert bad.status_code == 400
    assert set(bad.get_json()["fields"]) == {"node", "reason"}
    assert c.post("/admin/release", data=b"x").status_code == 400
    missing = c.post("/admin/release", json={"node": "nowhere"})
    assert missing.status_code == 422
    assert "does not exist" in missing.get_json()["error"]
    ok = c.post("/admin/release", json={"node": "gpu-1"})
    assert ok.status_code == 200
    assert ok.get_json()["status"] == "acted"
    assert ok.get_json()["event"]["type"] == ev.NodeReleased.TYPE


def test_admin_needs_the_token_when_set(cluster: FakeKubeServer,
                                        make_ctx: Callable[..., Context]) -> None:
    c = client_for(make_ctx(admin_token="tok"))
    assert c.post("/admin/release", json={"node": "gpu-1"}).status_code == 401
    assert c.post("/admin/release", json={"node": "gpu-1"},
                  headers={"Authorization": "Bearer no"}).status_code == 403
    assert c.post("/admin/release", json={"node": "gpu-1"},
                  headers={"Authorization": "Bearer tok"}).status_code == 200


def test_admin_sweep_runs_deferred_actions(cluster: FakeKubeServer, ctx: Context,
                                           fake_time: FakeTime, sink: Sink) -> None:
    c = client_for(ctx)
    post(c, "/trip_breaker", lost("gpu-1"))
    post(c, "/trip_breaker", ev.build(ev.GpuHealthy(node="gpu-1"), source="/t"))
    fake_time.advance(ctx.settings.node_hold_s + 1)
    outcomes = c.post("/admin/sweep").get_json()["outcomes"]
    assert [(o["function"], o["status"]) for o in outcomes] == [("trip_breaker", "acted")]
    assert sink.types() == [ev.BreakerHalfOpened.TYPE]
    assert host_of(c.application).sweep() == []


# --- through the local broker, over real HTTP ---------------------------------------------


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_chain_through_the_local_broker(cluster: FakeKubeServer,
                                        make_ctx: Callable[..., Context]) -> None:
    """Three OOMKilled events -> trip_breaker opens the revision breaker -> its reply re-enters
    the broker -> reroute_traffic moves the traffic; a fatal XID -> node breaker + quarantine."""
    with ev.BrokerServer() as broker:
        publisher = ev.Publisher(ev.Sender(), broker.url)
        ctx = make_ctx(sink=publisher)
        with FunctionsServer(ctx.settings, ctx, sweep=False) as server:
            for t in server.triggers():
                broker.broker.add_trigger(t)
            sender = ev.Sender()
            for i in range(3):
                status, _ = sender.send_once(oom(f"primary-{i + 1}"), broker.url)
                assert status == 202
            assert _wait(lambda: traffic_of(cluster)[0] == ("surefoot-primary", 0, "primary"))
            assert ctx.breakers.status(revision_key("surefoot-primary")).state == "open"
            sender.send_once(xid("gpu-3", 79), broker.url)
            assert _wait(lambda: cluster.get("nodes", "gpu-3", None)["spec"]
                         .get("unschedulable") is True)
            assert ctx.breakers.status(node_key("gpu-3")).state == "open"
            ctx.breakers.close(revision_key("surefoot-primary"), "probes succeeded")
            sender.send_once(closed(), broker.url)
            assert _wait(lambda: traffic_of(cluster)[0] == ("surefoot-primary", 100, "primary"),
                         timeout=20)
            broker.broker.wait_idle(5)
            assert broker.broker.stats["failed"] == 0
            sender.close()
        publisher.close()


@pytest.mark.parametrize("path", ["/trip_breaker", "/"])
def test_real_http_server_answers(cluster: FakeKubeServer, ctx: Context, path: str) -> None:
    with FunctionsServer(ctx.settings, ctx, sweep=False) as server:
        msg = ev.to_binary(xid("gpu-4", 79))
        r = httpx.post(server.url + path, content=msg.body, headers=msg.headers)
        assert r.status_code == 200
        assert r.headers["ce-type"] == ev.BreakerOpened.TYPE

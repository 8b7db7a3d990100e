"""A replica's readiness follows its node's breaker in the shared Redis."""

from __future__ import annotations

from knative.breakers import BreakerRegistrySettings, BreakerStore
from knative.serving import NodeBreakerWatch, ServeSettings, create_app, runtime_of


def test_readiness_fails_while_the_node_breaker_is_open(redis_url, gemma):
    app = create_app(ServeSettings(node="node-7"), gemma)
    watch = NodeBreakerWatch(BreakerRegistrySettings(redis_url=redis_url), "node-7")
    runtime_of(app).quarantine_check = watch.reason
    client = app.test_client()
    store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=redis_url))

    watch.poll()
    assert client.get("/readyz").status_code == 200
    store.open("node:node-7", "xid 79")
    watch.poll()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "node:node-7 is open" in r.json["reason"]
    store.reset("node:node-7", "released")
    watch.poll()
    assert client.get("/readyz").status_code == 200


def test_an_unreadable_redis_keeps_the_last_state(redis_server, gemma):
    watch = NodeBreakerWatch(BreakerRegistrySettings(redis_url=redis_server.url), "node-8")
    store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=redis_server.url))
    store.open("node:node-8", "ecc")
    watch.poll()
    assert watch.reason()
    redis_server.kill()
    try:
        watch.poll()  # no exception, no change
        assert watch.reason()
    finally:
        redis_server.start()

"""The replica's OpenAI API on the real Gemma and MiniLM models, through Flask's test client."""

from __future__ import annotations

import json
import math

import pytest
from flask.testing import FlaskClient

from knative.serving import ServeSettings, create_app, runtime_of


@pytest.fixture
def settings() -> ServeSettings:
    return ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=2, max_body_bytes=4096)


@pytest.fixture
def client(settings, gemma, minilm) -> FlaskClient:
    return create_app(settings, gemma, minilm).test_client()


def sse_events(body: bytes) -> list[str]:
    return [line[len("data: "):] for line in body.decode().split("\n\n")
            if line.startswith("data: ")]


def test_completion_generates_text_with_usage(client):
    r = client.post("/v1/completions", json={
        "model": "gemma-3-270m", "prompt": "The capital of France is", "max_tokens": 4,
        "temperature": 0,
    })
    assert r.status_code == 200, r.json
    body = r.json
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].strip()
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert 0 < body["usage"]["completion_tokens"] <= 4
    assert body["usage"]["prompt_tokens"] > 0


def test_completion_is_deterministic_at_temperature_zero(client):
    req = {"prompt": "One, two, three,", "max_tokens": 5, "temperature": 0}
    a = client.post("/v1/completions", json=req).json["choices"][0]["text"]
    b = client.post("/v1/completions", json=req).json["choices"][0]["text"]
    assert a == b


def test_chat_completion(client):
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
        "temperature": 0,
    })
    assert r.status_code == 200, r.json
    choice = r.json["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert r.json["usage"]["prompt_tokens"] > 3


def test_completion_stream_is_openai_sse(client):
    r = client.post("/v1/completions", json={
        "prompt": "Once upon a time", "max_tokens": 5, "stream": True, "temperature": 0,
        "stream_options": {"include_usage": True},
    })
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    events = sse_events(r.get_data())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text.strip()
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("length", "stop")
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_chat_stream_starts_with_role_and_ends_done(client):
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Count: one, two,"}], "max_tokens": 5,
        "stream": True,
    })
    events = sse_events(r.get_data())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_embeddings_are_384_dim_and_normalised(client):
    r = client.post("/v1/embeddings", json={"input": ["a cat", "a dog"],
                                            "model": "all-minilm-l6-v2"})
    assert r.status_code == 200, r.json
    data = r.json["data"]
    assert [d["index"] for d in data] == [0, 1]
    vec = data[0]["embedding"]
    assert len(vec) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-3)
    assert r.json["usage"]["prompt_tokens"] > 0


def test_models_lists_both_models(client):
    ids = [m["id"] for m in client.get("/v1/models").json["data"]]
    assert ids == ["gemma-3-270m", "all-minilm-l6-v2"]


def test_metrics_count_requests_and_tokens(client):
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    client.post("/v1/completions", data="nope", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'surefoot_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'surefoot_requests_total{route="/v1/completions",status="400"} 1.0' in text
    assert "surefoot_generated_tokens_total" in text
    assert "surefoot_request_seconds_bucket" in text
    assert "surefoot_queue_depth" in text


# --- bad input -----------------------------------------------------------------------------

LONG_PROMPT = "word " * 400

BAD = [
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "n": 99}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
    ("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"prompt": "word " * 200, "max_tokens": 64}, 400, "max_tokens"),
    ("/v1/completions", [1, 2], 400, "body"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}],
                              "max_tokens": 4}, 400, "messages"),
    ("/v1/embeddings", {"input": 3}, 400, "input"),
    ("/v1/embeddings", {"input": "x", "model": "gemma-3-270m"}, 404, "model"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD, ids=[f"{b[0]}-{b[3]}-{i}"
                                                           for i, b in enumerate(BAD)])
def test_bad_input_names_the_field(client, path, body, status, param):
    r = client.post(path, json=body)
    assert r.status_code == status, r.json
    err = r.json["error"]
    assert err["param"] == param
    assert param.split("[")[0] in err["message"]
    assert err["type"] == "invalid_request_error"


def test_every_bad_field_is_reported_at_once(client):
    r = client.post("/v1/completions", json={"prompt": 1, "max_tokens": 0, "top_p": 9})
    assert r.status_code == 400
    assert {f["param"] for f in r.json["error"]["fields"]} == {"prompt", "max_tokens", "top_p"}


def test_invalid_json(client):
    r = client.post("/v1/completions", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert "invalid JSON" in r.json["error"]["message"]


def test_wrong_content_type_is_415(client):
    r = client.post("/v1/completions", data="prompt=x", content_type="text/plain")
    assert r.status_code == 415
    assert r.json["error"]["param"] == "Content-Type"


def test_body_over_limit_is_413(client):
    r = client.post("/v1/completions", json={"prompt": "x" * 5000})
    assert r.status_code == 413
    assert "4096" in r.json["error"]["message"]


def test_unknown_route_is_json_404(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    assert "error" in r.json


# --- admission and lifecycle ---------------------------------------------------------------

def test_full_queue_answers_503_with_retry_after(settings, gemma):
    app = create_app(settings, gemma)
    rt = runtime_of(app)
    held = [rt.admit() for _ in range(settings.queue_capacity)]
    r = app.test_client().post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json["error"]["code"] == "queue_full"
    for t in held:
        t.release()
    assert app.test_client().post("/v1/completions",
                                  json={"prompt": "x", "max_tokens": 1}).status_code == 200
    assert rt.inflight == 0


def test_readiness_follows_loading_draining_and_quarantine(settings, gemma):
    app = create_app(settings, gemma)
    rt = runtime_of(app)
    c = app.test_client()
    assert c.get("/readyz").status_code == 200
    rt.quarantine_check = lambda: "node breaker open"
    r = c.get("/readyz")
    assert r.status_code == 503
    assert "quarantined" in r.json["reason"]
    rt.quarantine_check = None
    rt.begin_drain()
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 503
    assert r.json["error"]["code"] == "draining"


def test_not_ready_while_model_loads(settings):
    app = create_app(settings)  # backends built from settings, not loaded
    c = app.test_client()
    r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json["reason"] == "loading model"
    assert c.post("/v1/completions", json={"prompt": "x"}).status_code == 503


def test_drain_waits_for_inflight_then_runs_hooks(settings, gemma):
    app = create_app(settings, gemma)
    rt = runtime_of(app)
    order: list[str] = []
    rt.drain_hooks.append(lambda: order.append("snapshot"))
    ticket = rt.admit()
    assert rt.drain(grace=0.0) is False  # still in flight: grace runs out
    assert order == ["snapshot"]
    ticket.release()
    assert rt.wait_idle(0.01) is True


def test_stream_releases_admission_when_client_goes_away(settings, gemma):
    app = create_app(settings, gemma)
    rt = runtime_of(app)
    r = app.test_client().post("/v1/completions", json={
        "prompt": "Tell a story", "max_tokens": 30, "stream": True}, buffered=False)
    it = r.response
    next(iter(it))
    r.close()
    assert rt.inflight == 0


def test_stream_refused_before_its_first_token_releases_admission(settings, gemma):
    app = create_app(settings, gemma)
    rt = runtime_of(app)
    r = app.test_client().post("/v1/completions", json={
        "prompt": LONG_PROMPT, "max_tokens": 4, "stream": True})
    assert r.status_code == 400
    assert r.json["error"]["param"] == "prompt"
    assert rt.inflight == 0

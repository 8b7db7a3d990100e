"""A replica's side of stream resume, on the real Gemma model through Flask's test client: the
internal field is refused from clients, a stream for the gateway reports its token ids, and a
stream continued from any prefix of them is the uninterrupted one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from knative.serving import ServeSettings, create_app

TOKEN = "internal-s3cret"
INTERNAL = {"X-Surefoot-Internal": TOKEN}
FIELD = ',"surefoot_resume":'


@pytest.fixture(params=["batching", "single-sequence"])
def client(request) -> FlaskClient:
    # both engines: the replica's default and the one `surefoot up` runs on shared cores
    backend = request.getfixturevalue("gemma" if request.param == "batching" else "gemma_serial")
    settings = ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=4, max_body_bytes=8192,
                             internal_token=TOKEN)
    return create_app(settings, backend, None).test_client()


def events(body: bytes) -> list[str]:
    return [e[len("data: "):] for e in body.decode().split("\n\n") if e.startswith("data: ")]


def split(event: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The event as a client sees it, and the internal field (None without one)."""
    i = event.rfind(FIELD)
    if i < 0:
        return json.loads(event), None
    return json.loads(event[:i] + "}"), json.loads(event[i + len(FIELD):-1])


def text_of(chunks: list[dict[str, Any]]) -> str:
    out = []
    for c in chunks:
        for ch in c.get("choices", []):
            out.append(ch.get("text") or (ch.get("delta") or {}).get("content") or "")
    return "".join(out)


def run(client: FlaskClient, path: str, body: dict[str, Any],
        headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    r = client.post(path, json=body, headers=headers or {})
    assert r.status_code == 200, r.data
    evs = events(r.data)
    assert evs[-1] == "[DONE]"
    pairs = [split(e) for e in evs[:-1]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


CHAT = {"messages": [{"role": "user", "content": "Write a haiku about the sea."}],
        "max_tokens": 24, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}}
COMPLETION = {"prompt": "A list of five fruits: apple,", "max_tokens": 20, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_client_sent_resume_field_is_refused(client, path) -> None:
    body = {**(COMPLETION if "chat" not in path else CHAT),
            "surefoot_resume": {"tokens": [1, 2], "chars": 0, "id": "x", "created": 1}}
    r = client.post(path, json=body)
    assert r.status_code == 400
    assert r.json["error"]["param"] == "surefoot_resume"
    r = client.post(path, json=body, headers={"X-Surefoot-Internal": "wrong-token"})
    assert r.status_code == 400
    assert "surefoot_resume" in r.json["error"]["message"]


def test_internal_stream_reports_tokens_and_the_same_chunks(client) -> None:
    plain, extra = run(client, "/v1/chat/completions", CHAT)
    assert extra == [None] * len(extra)
    chunks, fields = run(client, "/v1/chat/completions", CHAT, INTERNAL)
    assert all(f is not None for f in fields)
    assert text_of(chunks) == text_of(plain)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [
        c["choices"][0]["finish_reason"] for c in plain if c["choices"]]
    ids = [t for f in fields for t in f["t"]]
    assert len(ids) == chunks[-1]["usage"]["completion_tokens"] == plain[-1]["usage"][
        "completion_tokens"]
    assert fields[-1]["c"] == len(text_of(chunks))


JSON_CHAT = {**CHAT, "max_tokens": 40, "response_format": {"type": "json_object"},
             "messages": [{"role": "user", "content": "Describe a cat as JSON."}]}
SEEDED = {**COMPLETION, "temperature": 0.9, "seed": 11}


@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION),
                                            ("/v1/chat/completions", CHAT),
                                            ("/v1/chat/completions", JSON_CHAT),
                                            ("/v1/completions", SEEDED)],
                         ids=["completion", "chat", "json_object", "seeded"])
def test_resumed_from_every_break_is_the_uninterrupted_stream(client, path, body) -> None:
    chunks, fields = run(client, path, body, INTERNAL)
    full = text_of(chunks)
    last = len(chunks) - 2  # the finish chunk (then usage)
    for cut in sorted({1, 2, last // 2, last - 1, last}):
        ids = [t for f in fields[:cut] for t in f["t"]]
        sent = text_of(chunks[:cut])
        resume = {"tokens": ids, "chars": fields[cut - 1]["c"], "id": chunks[0]["id"],
                  "created": chunks[0]["created"]}
        rest, _ = run(client, path, {**body, "surefoot_resume": resume}, INTERNAL)
        assert sent + text_of(rest) == full, cut
        assert all(c["id"] == chunks[0]["id"] and c["created"] == chunks[0]["created"]
                   for c in rest)
        roles = [c for c in rest if c["choices"] and "role" in c["choices"][0].get("delta", {})]
        assert roles == []
        finishes = [c["choices"][0]["finish_reason"] for c in rest
                    if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finishes == [chunks[-2]["choices"][0]["finish_reason"]]
        assert rest[-1]["usage"] == chunks[-1]["usage"]


def test_a_stop_sequence_across_the_break_still_stops(client) -> None:
    chunks, fields = run(client, "/v1/completions", COMPLETION, INTERNAL)
    full = text_of(chunks)
    # a stop whose first two characters came before the break and the rest after it
    cut, stop = next((k, full[f["c"] - 2:f["c"] + 2]) for k, f in enumerate(fields, 1)
                     if 2 <= f["c"] <= len(full) - 2
                     and full.index(full[f["c"] - 2:f["c"] + 2]) == f["c"] - 2)
    at = full.index(stop)
    body = {**COMPLETION, "stop": [stop]}
    stopped, _ = run(client, "/v1/completions", body, INTERNAL)
    assert text_of(stopped) == full[:at]
    # a stream with this stop held the stop's start back: the client has the text before it
    ids = [t for f in fields[:cut] for t in f["t"]]
    resume = {"tokens": ids, "chars": at, "id": "cmpl-x", "created": 1}
    rest, _ = run(client, "/v1/completions", {**body, "surefoot_resume": resume}, INTERNAL)
    assert text_of(rest) == ""
    assert rest[-2]["choices"][0]["finish_reason"] == "stop"
    assert rest[-1]["usage"] == stopped[-1]["usage"]

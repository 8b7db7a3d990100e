"""Requests OpenAI's published API calls valid, replayed against a real replica (Gemma 3 270M
and MiniLM behind a real HTTP port); each answer is validated with the published response
schemas (OpenAPI document 2.3.0, vendored in tests/data/openai/). A parameter refused on
purpose answers 400 naming it, and is listed in docs/api.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from knative.serving import ServeSettings
from tests.knative.openai_schemas import (
    BASE64_EMBEDDINGS,
    STREAMED_COMPLETION,
    properties,
    violations,
)
from tests.knative.replica_http import serve_replica, sse_chunks

MODEL = "gemma-3-270m"
EMBED = "all-minilm-l6-v2"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
USER = [{"role": "user", "content": "Name a colour."}]
SMALL_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                "additionalProperties": False}


def cmpl(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "The sky is", "max_tokens": 3, "temperature": 0, **kw}


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, "max_completion_tokens": 3, "temperature": 0,
            **kw}


def emb(**kw: Any) -> dict[str, Any]:
    return {"model": EMBED, "input": "hello", **kw}


C, CH, E = "/v1/completions", "/v1/chat/completions", "/v1/embeddings"
NAMES = {C: "completion", CH: "chat", E: "embedding"}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}

# (path, body, the param a 400 names, or None for a 200)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # --- completions ---
    (C, cmpl(), None),
    (C, cmpl(prompt=["One", "Two"]), None),
    (C, cmpl(prompt=[818, 7217, 563]), None),
    (C, cmpl(prompt=[[818, 7217], [9259]]), None),
    (C, cmpl(echo=True), None),
    (C, cmpl(echo=True, logprobs=2), None),
    (C, cmpl(logprobs=3), None),
    (C, cmpl(logprobs=0, **STREAM), None),
    (C, cmpl(n=2, seed=7, temperature=0.8), None),
    (C, cmpl(n=2, best_of=2, temperature=0.8, **STREAM), None),
    (C, cmpl(best_of=1), None),
    (C, cmpl(frequency_penalty=0.5, presence_penalty=-0.5), None),
    (C, cmpl(logit_bias={}), None),
    (C, cmpl(stop=["\n", "."], top_p=0.9, user="u-1"), None),
    (C, cmpl(stop="\n", seed=3, temperature=1.0), None),
    (C, cmpl(max_tokens=None), None),
    (C, cmpl(**STREAM), None),
    (C, cmpl(stream=True, echo=True), None),
    (C, cmpl(stream=False, suffix=None), None),
    (C, cmpl(best_of=3), "best_of"),
    (C, cmpl(logit_bias={"50256": -100}), "logit_bias"),
    (C, cmpl(suffix=" and that is all."), "suffix"),
    # --- chat completions ---
    (CH, chat(), None),
    (CH, chat(max_completion_tokens=None, max_tokens=3), None),
    (CH, chat(messages=[{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]), None),
    (CH, chat(messages=[{"role": "system", "content": "Be brief.", "name": "s"},
                        {"role": "user", "content": "Hi", "name": "u"},
                        {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Bye"}]), None),
    (CH, chat(logprobs=True, top_logprobs=2), None),
    (CH, chat(logprobs=True, **STREAM), None),
    (CH, chat(logprobs=False), None),
    (CH, chat(n=2, seed=5, temperature=0.9), None),
    (CH, chat(n=2, temperature=0.9, **STREAM), None),
    (CH, chat(frequency_penalty=1.0, presence_penalty=1.0, top_p=0.5), None),
    (CH, chat(stop=["\n"], seed=1, user="u-2", logit_bias={}), None),
    (CH, chat(response_format={"type": "text"}), None),
    (CH, chat(response_format={"type": "json_object"}, max_completion_tokens=4), None),
    (CH, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": SMALL_SCHEMA}},
        max_completion_tokens=8), None),
    (CH, chat(tools=TOOLS, tool_choice="none"), None),
    (CH, chat(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False), None),
    (CH, chat(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
              tool_choice={"type": "function", "function": {"name": "get_weather"}},
              max_completion_tokens=24), None),
    (CH, chat(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
              tool_choice="required", parallel_tool_calls=True, max_completion_tokens=24,
              **STREAM), None),
    (CH, chat(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}], tools=TOOLS),
     None),
    (CH, chat(metadata={"team": "a"}, store=False, service_tier="auto",
              prompt_cache_key="k1", safety_identifier="s-1"), None),
    (CH, chat(prediction={"type": "content", "content": "Blue."}, verbosity="low",
              reasoning_effort="low", modalities=["text"]), None),
    (CH, chat(prompt_cache_retention="in_memory",
              prompt_cache_options={"mode": "implicit"}), None),
    (CH, chat(stream=True, stream_options={"include_usage": True,
                                           "include_obfuscation": False}), None),
    (CH, chat(messages=[{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": [
                            {"type": "refusal", "refusal": "I cannot."}]},
                        {"role": "user", "content": "Why?"}]), None),
    (CH, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]),
     "messages[0].content[1]"),
    (CH, chat(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}),
     "audio"),
    (CH, chat(functions=[TOOLS[0]["function"]]), "functions"),
    (CH, chat(function_call="none"), "function_call"),
    (CH, chat(logit_bias={"50256": -100}), "logit_bias"),
    (CH, chat(web_search_options={}), "web_search_options"),
    (CH, chat(moderation={"model": "omni-moderation-latest"}), "moderation"),
    (CH, chat(store=True), "store"),
    # --- embeddings ---
    (E, emb(), None),
    (E, emb(input=["a", "b"], encoding_format="base64", user="u"), None),
    (E, emb(input=[101, 7592, 102]), None),
    (E, emb(input=[[7592], [2088, 2003]], encoding_format="float"), None),
    (E, emb(dimensions=384), None),
    (E, emb(dimensions=64), "dimensions"),
]


@pytest.fixture(scope="module")
def replica(gemma, minilm) -> Iterator[str]:
    settings = ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=4, max_n=4)
    with serve_replica(settings, gemma, minilm) as url:
        yield url


def _response_schema(path: str, stream: bool, body: dict[str, Any]) -> str:
    if path == E:
        b64 = body.get("encoding_format") == "base64"
        return BASE64_EMBEDDINGS if b64 else "CreateEmbeddingResponse"
    if path == C:
        return STREAMED_COMPLETION if stream else "CreateCompletionResponse"
    return "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse"


def _request_schema(path: str) -> str:
    return {C: "CreateCompletionRequest", CH: "CreateChatCompletionRequest",
            E: "CreateEmbeddingRequest"}[path]


def test_the_table_is_valid_by_the_document_and_covers_every_parameter():
    assert len(CASES) >= 40
    for path, body, _ in CASES:
        assert violations(_request_schema(path), body) == [], body
    for path in (C, CH, E):
        used = set().union(*(b.keys() for p, b, _ in CASES if p == path))
        assert properties(_request_schema(path)) - used == set()


def test_every_refused_parameter_is_documented():
    text = DOCS.read_text()
    for _, _, param in CASES:
        if param is not None:
            name = re.sub(r"\[\d+\]", "[]", param)
            assert f"`{name}`" in text, name


@pytest.mark.parametrize(("path", "body", "refused"), CASES,
                         ids=[f"{i}-{NAMES[p]}-{r or 'ok'}" for i, (p, _, r) in enumerate(CASES)])
def test_answer_conforms(replica, path, body, refused):
    stream = body.get("stream") is True
    r = httpx.post(f"{replica}{path}", json=body, timeout=120)
    if refused is not None:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == refused
        assert refused in r.json()["error"]["message"]
        assert violations("ErrorResponse", r.json()) == []
        return
    assert r.status_code == 200, r.text
    schema = _response_schema(path, stream, body)
    if not stream:
        assert violations(schema, r.json()) == []
        return
    chunks, done = sse_chunks(r.text)
    assert done
    assert chunks
    for chunk in chunks:
        assert violations(schema, chunk) == [], chunk
    if body.get("stream_options", {}).get("include_usage"):
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] > 0


def test_models_list_and_each_model(replica):
    listed = httpx.get(f"{replica}/v1/models").json()
    assert violations("ListModelsResponse", listed) == []
    for m in listed["data"]:
        r = httpx.get(f"{replica}/v1/models/{m['id']}")
        assert r.status_code == 200
        assert violations("Model", r.json()) == []
        assert r.json() == m


def test_unknown_model_is_a_404_error_object(replica):
    r = httpx.get(f"{replica}/v1/models/gpt-9")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert violations("ErrorResponse", r.json()) == []
    assert r.json()["error"]["param"] == "model"
    assert "gpt-9" in r.json()["error"]["message"]

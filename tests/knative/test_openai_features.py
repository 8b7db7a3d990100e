"""What OpenAI clients ask of the API beyond plain text, on a real replica through the openai
client: token-id prompts, ``n`` choices, logprobs, JSON output, tool calls; and the gateway
in front of it."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from werkzeug.serving import make_server

from knative.gateway import (
    Endpoint,
    GatewaySettings,
    Route,
    RoutingTable,
    StaticResolver,
    create_gateway_app,
)
from knative.serving import ServeSettings, SettingsError
from tests.knative.openai_schemas import violations
from tests.knative.replica_http import serve_replica, sse_chunks

openai = pytest.importorskip("openai")

MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def replica(gemma, minilm) -> Iterator[str]:
    settings = ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=4, max_n=3,
                             internal_token="internal-t0k")
    with serve_replica(settings, gemma, minilm) as url:
        yield url


@pytest.fixture(scope="module")
def client(replica) -> Any:
    return openai.OpenAI(base_url=f"{replica}/v1", api_key="unused", max_retries=0)


# --- token-id prompts ------------------------------------------------------------------------

def test_a_token_prompt_gives_the_text_of_its_decoded_prompt(client, gemma):
    ids = list(gemma.llm.tokenize(PROMPT.encode(), add_bos=False))
    text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    with_bos = client.completions.create(model=MODEL, prompt=[gemma.llm.token_bos(), *ids],
                                         max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text == with_bos.choices[0].text
    assert by_ids.usage.prompt_tokens == text.usage.prompt_tokens


def test_a_list_of_token_prompts_gives_one_choice_each(client, gemma):
    prompts = ["One, two,", "Red, green,"]
    ids = [list(gemma.llm.tokenize(p.encode(), add_bos=False)) for p in prompts]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    ref = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == [c.text for c in ref.choices]


def test_echo_of_a_token_prompt_repeats_its_text(client, gemma):
    ids = list(gemma.llm.tokenize(PROMPT.encode(), add_bos=False))
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=2, temperature=0,
                                    echo=True)
    assert out.choices[0].text.startswith(PROMPT)


def test_token_inputs_embed_as_their_text(client, minilm):
    ids = minilm._st.tokenizer("hello world")["input_ids"]
    by_ids = client.embeddings.create(model="all-minilm-l6-v2", input=[ids])
    by_text = client.embeddings.create(model="all-minilm-l6-v2", input="hello world")
    a, b = by_ids.data[0].embedding, by_text.data[0].embedding
    assert len(a) == 384
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


# --- n -----------------------------------------------------------------------------------------

def test_n_choices_each_with_its_index(client):
    out = client.completions.create(model=MODEL, prompt=["Hi", "Bye"], max_tokens=3, n=2,
                                    temperature=1.0, seed=11)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    again = client.completions.create(model=MODEL, prompt=["Hi", "Bye"], max_tokens=3, n=2,
                                      temperature=1.0, seed=11)
    assert [c.text for c in out.choices] == [c.text for c in again.choices]
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say a word."}], max_tokens=3, n=3,
        temperature=1.0, seed=5)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert all(c.message.role == "assistant" for c in chat.choices)
    assert chat.usage.prompt_tokens < 3 * 20  # the prompt is counted once


def test_streamed_choices_each_start_with_a_role_and_end_with_a_finish(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, n=2,
        stream=True, temperature=0.9))
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index].append(ch)
    for choices in by_index.values():
        assert choices[0].delta.role == "assistant"
        assert choices[-1].finish_reason in ("stop", "length")


def test_n_above_the_setting_names_n(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, n=4)
    assert info.value.body["param"] == "n"
    assert "n" in info.value.body["message"]


@pytest.mark.parametrize(("value", "needle"), [("0", "max_n"), ("many", "SUREFOOT_MAX_N")])
def test_a_bad_max_n_setting_names_it(value, needle):
    with pytest.raises(SettingsError, match=needle):
        ServeSettings.from_env({"SUREFOOT_MAX_N": value})


# --- logprobs ----------------------------------------------------------------------------------

def _check_completion_logprobs(text: str, lp: Any, k: int, offset: int) -> None:
    assert "".join(lp.tokens) == text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.text_offset[0] == offset
    assert all(b > a for a, b in zip(lp.text_offset, lp.text_offset[1:], strict=False))
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0
        assert len(top) == k
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6


def test_completion_logprobs_greedy_tokens_are_the_most_likely(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0,
                                    logprobs=3)
    choice = out.choices[0]
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert choice.text == plain.choices[0].text
    _check_completion_logprobs(choice.text, choice.logprobs, 3, len(PROMPT))
    for token, lp, top in zip(choice.logprobs.tokens, choice.logprobs.token_logprobs,
                              choice.logprobs.top_logprobs, strict=True):
        assert max(top.values()) == pytest.approx(lp)
        assert top[token] == pytest.approx(lp)


def test_echo_gives_the_prompts_logprobs_first(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0,
                                    logprobs=1, echo=True)
    choice = out.choices[0]
    assert choice.text.startswith(PROMPT)
    _check_completion_logprobs(choice.text, choice.logprobs, 1, 0)
    assert "".join(choice.logprobs.tokens[:5]) == PROMPT


def test_streamed_logprobs_are_those_of_the_whole_answer(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0,
                                      logprobs=2).choices[0].logprobs
    tokens, lps = [], []
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5,
                                           temperature=0, logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            lps += chunk.choices[0].logprobs.token_logprobs
    assert tokens == whole.tokens
    assert lps == pytest.approx(whole.token_logprobs, abs=1e-4)


def test_chat_logprobs_content_entries(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=2)
    choice = out.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert bytes(e.bytes).decode() == e.token
        assert len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
    streamed = [e.token for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=2, stream=True)
        for ch in c.choices if ch.logprobs for e in ch.logprobs.content or []]
    assert streamed == [e.token for e in entries]


BAD = [
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": [1, -2]}, "prompt"),
    ("/v1/completions", {"prompt": [[1], "x"]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "yaml"}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, "tools[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [WEATHER], "tool_choice": {
                                  "type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]},
     "messages[0].tool_call_id"),
    ("/v1/embeddings", {"input": [[1], [-1]]}, "input"),
    ("/v1/completions", {"prompt": [818, 10_000_000]}, "prompt"),
    ("/v1/embeddings", {"input": [[7592], [10_000_000]]}, "input"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD, ids=[b[2] for b in BAD])
def test_bad_feature_input_names_the_field(replica, path, body, param):
    r = httpx.post(f"{replica}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert param.split("[")[0].split(".")[0] in r.json()["error"]["message"]


# --- structured output -----------------------------------------------------------------------

def test_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12},
                                               "ok": {"type": "boolean"}},
              "required": ["colour", "ok"], "additionalProperties": False}
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=40,
        temperature=0, response_format={"type": "json_schema", "json_schema": {
            "name": "colour", "strict": True, "schema": schema}})
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


def test_json_object_output_is_held_to_json(client):
    # the small model rarely closes a free-form object within a short budget: the answer is
    # held to JSON from its first token (a whole one parses; the schema test parses one)
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6, temperature=0, response_format={"type": "json_object"})
    text = out.choices[0].message.content
    assert text.lstrip().startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6, temperature=0)
    assert not plain.choices[0].message.content.lstrip().startswith("{")


def test_a_tool_call_round_trip(client):
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], max_tokens=32, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                            tool_choice="none", max_tokens=8, temperature=0)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None


def test_a_required_tool_call_streams_as_tool_call_deltas(client):
    name, args, finish = "", "", None
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}],
            tools=[WEATHER], tool_choice="required", max_tokens=32, temperature=0,
            stream=True):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert name == "get_weather"
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])


# --- through the gateway ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(replica) -> Iterator[str]:
    table = RoutingTable((Route("primary", 100, (Endpoint(replica, replica="r1"),)),))
    settings = GatewaySettings(internal_token="internal-t0k")
    app = create_gateway_app(settings, StaticResolver(table), None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_one_model_through_the_gateway(gateway):
    r = httpx.get(f"{gateway}/v1/models/{MODEL}", timeout=30)
    assert r.status_code == 200
    assert violations("Model", r.json()) == []
    assert r.json()["id"] == MODEL
    missing = httpx.get(f"{gateway}/v1/models/gpt-9", timeout=30)
    assert missing.status_code == 404
    assert violations("ErrorResponse", missing.json()) == []
    assert missing.json()["error"]["param"] == "model"


def test_n_and_logprobs_stream_through_the_gateway(gateway):
    r = httpx.post(f"{gateway}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
        "n": 2, "logprobs": True, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    chunks, done = sse_chunks(r.text)
    assert done
    for c in chunks:
        assert violations("CreateChatCompletionStreamResponse", c) == [], c
    assert {ch["index"] for c in chunks for ch in c["choices"]} == {0, 1}
    assert chunks[-1]["usage"]["completion_tokens"] > 0


# --- on the batching engine -------------------------------------------------------------------

@pytest.fixture(scope="module")
def batched_client() -> Iterator[Any]:
    from knative.serving import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=2)
    backend.load()
    settings = ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=4, max_n=2, slots=2)
    with serve_replica(settings, backend, None) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_streamed_choices_interleave_on_the_batching_engine(batched_client):
    order = [ch.index for c in batched_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count: one, two,"}], max_tokens=8,
        n=2, stream=True, temperature=0) for ch in c.choices]
    assert set(order) == {0, 1}
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)  # 1 starts before 0 ends


def test_logprobs_and_schemas_on_the_batching_engine(batched_client):
    plain = batched_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5,
                                              temperature=0)
    out = batched_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5,
                                            temperature=0, logprobs=2)
    assert out.choices[0].text == plain.choices[0].text
    _check_completion_logprobs(out.choices[0].text, out.choices[0].logprobs, 2, len(PROMPT))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    answer = batched_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=16,
        temperature=0, response_format={"type": "json_schema", "json_schema": {
            "name": "yes_no", "strict": True, "schema": schema}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)


def test_the_grammar_checked_on_the_pick_first_samples_as_the_full_grammar(gemma):
    from llama_cpp.llama_grammar import LlamaGrammar

    from knative.serving._openai import SamplingParams

    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "legs": {"type": "integer"}},
              "required": ["name", "legs"]}
    prompt = "A cat, as JSON:"
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    params = SamplingParams(max_tokens=12, temperature=0.0, top_p=1.0)
    ours = "".join(d.text for d in gemma.token_stream(gemma.spec(prompt, params, grammar),
                                                      None))
    full = gemma.llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_p=1.0,
                                       grammar=grammar)["choices"][0]["text"]
    assert ours == full
    assert ours.startswith("{")

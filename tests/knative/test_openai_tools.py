"""Tools as OpenAI clients use them, on a real replica (Gemma 3 270M) through the openai
client: rendered by the model's own chat template when it has a tools section (a small Jinja
template with one stands in for such a model) and in a system turn when it has none (Gemma's),
``tool_choice: "required"`` with and without parallel calls, calls streamed as they grow, and
``usage: null`` on every chunk before the usage chunk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from knative.serving import ServeSettings
from knative.serving import _openai as oa
from knative.serving import _tools as tl
from knative.serving._backends import Delta
from knative.serving._choices import Choices
from knative.serving._features import Tools
from tests.knative.openai_schemas import violations
from tests.knative.replica_http import serve_replica, sse_chunks

openai = pytest.importorskip("openai")

MODEL = "gemma-3-270m"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city",
    "parameters": PARAMS}}
# a chat template with a tools section, in Gemma's turn markup (the model reads it as its own):
# tools listed in a system turn, an assistant's calls as JSON, a tool result as a user turn
TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<start_of_turn>system\nTools:{% for t in tools %} "
    "{{ t.function | tojson }}{% endfor %}<end_of_turn>\n{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}{\"name\": \"{{ c.function.name }}\", "
    "\"arguments\": {{ c.function.arguments | tojson }}}{% endfor %}"
    "{% elif m.role == 'tool' %}Result of {{ m.name }}: {{ m.content }}"
    "{% else %}{{ m.content }}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _call(city: str, call_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}


# two calls answered, then a question: a model given them as its own turns calls again
FEW_SHOT = [{"role": "user", "content": "Weather in Oslo?"}, _call("Oslo", "call_1"),
            {"role": "tool", "tool_call_id": "call_1", "content": "Rain"},
            {"role": "user", "content": "Weather in Lima?"}, _call("Lima", "call_2"),
            {"role": "tool", "tool_call_id": "call_2", "content": "Sun"},
            {"role": "user", "content": "Weather in Rome?"}]


@pytest.fixture(scope="module")
def replica(gemma, minilm) -> Iterator[str]:
    settings = ServeSettings(n_ctx=256, max_tokens=64, queue_capacity=4, max_n=2)
    with serve_replica(settings, gemma, minilm) as url:
        yield url


@pytest.fixture(scope="module")
def client(replica) -> Any:
    return openai.OpenAI(base_url=f"{replica}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def with_tools_template(gemma) -> Iterator[None]:
    """The replica's model rendering conversations with TOOLS_TEMPLATE."""
    before = gemma.llm.chat_handler
    gemma.llm.chat_handler = tl.template_handler(gemma.llm, TOOLS_TEMPLATE)
    try:
        yield
    finally:
        gemma.llm.chat_handler = before


def _request(body: dict[str, Any]) -> oa.ChatRequest:
    return oa.parse_chat({"model": MODEL, "max_tokens": 8, **body}, [MODEL], oa.Limits())


def _prompt_text(gemma: Any, body: dict[str, Any]) -> str:
    """The prompt the replica would run for a chat request, as text."""
    req = _request(body)
    choices = Choices(gemma)
    spec = choices.chat_spec(req, choices.chat_items(req)[0])
    return bytes(gemma.llm.detokenize(list(spec.tokens), special=True)).decode()


def _stream(client: Any, **kw: Any) -> list[Any]:
    return list(client.chat.completions.create(model=MODEL, stream=True, temperature=0, **kw))


def _calls_of(chunks: list[Any]) -> dict[int, list[Any]]:
    """Each call's tool_calls entries, in the order they came."""
    out: dict[int, list[Any]] = {}
    for c in chunks:
        for ch in c.choices:
            for tc in ch.delta.tool_calls or []:
                out.setdefault(tc.index, []).append(tc)
    return out


def _check_streamed_call(entries: list[Any]) -> dict[str, Any]:
    """A call streamed as OpenAI streams one: its first entry names it with empty arguments,
    the rest are fragments of its arguments only. Its arguments, parsed."""
    first, *rest = entries
    assert first.id.startswith("call_")
    assert first.type == "function"
    assert first.function.name == "get_weather"
    assert first.function.arguments == ""
    assert len(rest) >= 2  # the arguments come as they are generated, not at once
    for tc in rest:
        assert (tc.id, tc.type, tc.function.name) == (None, None, None)
    args: dict[str, Any] = json.loads("".join(tc.function.arguments for tc in rest))
    return args


# --- rendering ----------------------------------------------------------------------------------

def test_only_a_template_that_refers_to_tools_renders_them(gemma):
    assert tl.chat_template(gemma.llm) is None  # Gemma 3 270M: the built-in gemma format
    assert tl.uses_tools(TOOLS_TEMPLATE)
    assert not tl.uses_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not tl.uses_tools("{% if tools %}")  # does not parse: taken as without
    handler = tl.template_handler(gemma.llm, TOOLS_TEMPLATE)
    assert handler.chat_template == TOOLS_TEMPLATE


def test_without_a_tools_section_the_tools_go_in_a_system_turn(gemma):
    text = _prompt_text(gemma, {"messages": FEW_SHOT[:3], "tools": [WEATHER]})
    # Gemma's format drops system turns: the tools go in front of the first user turn, as
    # Gemma's own template puts a system turn
    assert text.startswith("<bos><start_of_turn>user\nYou can call these functions:\n")
    assert '"name": "get_weather"' in text
    assert "\n\nWeather in Oslo?<end_of_turn>" in text
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in text
    assert "Result of the tool call call_1: Rain" in text


def test_a_template_with_a_tools_section_renders_tools_and_tool_turns(gemma,
                                                                      with_tools_template):
    text = _prompt_text(gemma, {"messages": FEW_SHOT[:3], "tools": [WEATHER]})
    assert text == (
        "<bos><start_of_turn>system\nTools: " + json.dumps(WEATHER["function"])
        + "<end_of_turn>\n<start_of_turn>user\nWeather in Oslo?<end_of_turn>\n"
        '<start_of_turn>model\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
        "<end_of_turn>\n<start_of_turn>user\nResult of get_weather: Rain<end_of_turn>\n"
        "<start_of_turn>model\n")
    # tool turns go through the template even where the tools are not offered
    text = _prompt_text(gemma, {"messages": FEW_SHOT[:3], "tools": [WEATHER],
                                "tool_choice": "none"})
    assert "Tools:" not in text
    assert "Result of get_weather: Rain" in text


def test_a_tools_template_round_trip_through_the_replica(client, with_tools_template):
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=24, temperature=0)
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    messages = [{"role": "user", "content": "Weather in Paris?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                            tool_choice="none", max_tokens=6, temperature=0)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content


# --- tool_choice: required ---------------------------------------------------------------------

def test_required_without_parallel_calls_makes_one_call(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
        tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=30,
        temperature=0)
    assert out.choices[0].finish_reason == "tool_calls"
    (call,) = out.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)


def test_required_with_parallel_calls_may_make_several(client, with_tools_template):
    # under this template the model answers "required" with a list of calls
    chunks = _stream(client, messages=[{"role": "user", "content": "Weather in Paris?"}],
                     tools=[WEATHER], tool_choice="required", max_tokens=40)
    calls = _calls_of(chunks)
    assert sorted(calls) == list(range(len(calls)))
    assert len(calls) >= 2
    for entries in list(calls.values())[:-1]:  # the last may be cut off by max_tokens
        jsonschema.validate(_check_streamed_call(entries), PARAMS)
    assert len({entries[0].id for entries in calls.values()}) == len(calls)


def test_the_required_grammar_admits_a_list_of_calls_only_with_parallel_calls(gemma):
    import llama_cpp

    from knative.serving._grammar import GrammarSampler

    def admits(text: str, parallel: bool) -> bool:
        g = tl.grammar(None, Tools((WEATHER["function"],), "required", parallel))
        sampler = GrammarSampler(gemma.llm, None, g)  # only its grammar is asked
        for token in gemma.llm.tokenize(text.encode(), add_bos=False, special=False):
            if not sampler.allows(token):
                return False
            llama_cpp.llama_sampler_accept(sampler._grammar, token)
        return True

    one = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    two = f'[{one}, {one.replace("Rome", "Oslo")}]'
    assert admits(one, parallel=False)
    assert admits(one, parallel=True)
    assert admits(two, parallel=True)
    assert not admits(two, parallel=False)


# --- streamed calls ----------------------------------------------------------------------------

def test_a_required_call_streams_as_it_grows(replica):
    r = httpx.post(f"{replica}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
        "max_tokens": 30, "temperature": 0, "stream": True})
    chunks, done = sse_chunks(r.text)
    assert done
    for c in chunks:
        assert violations("CreateChatCompletionStreamResponse", c) == [], c
    assert not any(ch["delta"].get("content") for c in chunks for ch in c["choices"])
    parsed = [openai.types.chat.ChatCompletionChunk.model_validate(c) for c in chunks]
    (entries,) = _calls_of(parsed).values()
    jsonschema.validate(_check_streamed_call(entries), PARAMS)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_auto_call_streams_once_it_is_recognised(client, with_tools_template):
    chunks = _stream(client, messages=FEW_SHOT, tools=[WEATHER], max_tokens=30)
    (entries,) = _calls_of(chunks).values()
    assert _check_streamed_call(entries) == {"city": "Rome"}
    assert not any(ch.delta.content for c in chunks for ch in c.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def _fed(text: str, tools: Tools, constrained: bool = False) -> list[Delta]:
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    deltas = [Delta(p) for p in pieces[:-1]] + [Delta(pieces[-1], "stop", (3, len(pieces)))]
    return list(tl.streamed_calls(iter(deltas), tools, constrained))


@pytest.mark.parametrize(("text", "args"), [
    ('{"name": "get_weather", "arguments": {"city": "Rome"}}', ['{"city": "Rome"}']),
    ('```json\n{"name": "get_weather", "arguments": {"city": "R\\"o"}}\n```',
     ['{"city": "R\\"o"}']),
    ('{"arguments": {"city": "Rome"}, "name": "get_weather"}', ['{"city": "Rome"}']),
    ('[{"name": "get_weather", "arguments": {"city": "A"}}, '
     '{"name": "get_weather", "arguments": {"city": "B", "n": [1, {"x": "}"}]}}]',
     ['{"city": "A"}', '{"city": "B", "n": [1, {"x": "}"}]}']),
])
def test_an_auto_answer_that_is_calls_streams_as_calls(text, args):
    out = _fed(text, Tools((WEATHER["function"],), "auto", True))
    got: dict[int, str] = {}
    for d in out:
        assert not d.text
        for tc in d.tool_calls:
            got[tc["index"]] = got.get(tc["index"], "") + tc["function"]["arguments"]
    assert list(got.values()) == args
    assert (out[-1].finish_reason, out[-1].usage) == ("tool_calls", (3, -(-len(text) // 3)))


@pytest.mark.parametrize("text", ["Hello {", '{"name": "other", "arguments": {}}',
                                  '{"city": "Rome"}', "```python\nx = 1\n```", "  "])
def test_an_auto_answer_that_is_not_a_call_streams_as_its_text(text):
    out = _fed(text, Tools((WEATHER["function"],), "auto", True))
    assert "".join(d.text for d in out) == text
    assert not any(d.tool_calls for d in out)
    assert out[-1].finish_reason == "stop"


def test_without_parallel_calls_only_the_first_streams():
    text = ('[{"name": "get_weather", "arguments": {"city": "A"}}, '
            '{"name": "get_weather", "arguments": {"city": "B"}}]')
    out = _fed(text, Tools((WEATHER["function"],), "auto", False))
    assert {tc["index"] for d in out for tc in d.tool_calls} == {0}


# --- usage: null --------------------------------------------------------------------------------

def test_with_include_usage_every_chat_chunk_before_the_last_has_null_usage(replica):
    r = httpx.post(f"{replica}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "n": 2, "stream": True, "stream_options": {"include_usage": True}})
    chunks, done = sse_chunks(r.text)
    assert done
    for c in chunks:
        assert violations("CreateChatCompletionStreamResponse", c) == [], c
    *before, last = chunks
    assert before
    assert all("usage" in c and c["usage"] is None for c in before)
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0
    r = httpx.post(f"{replica}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "stream": True})
    assert all("usage" not in c for c in sse_chunks(r.text)[0])

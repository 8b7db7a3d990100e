"""The pieces of stream resume that need no model: which requests are resumable, the events'
internal field stripped and read, the stall timeout from observed gaps, the text rebuilt from
token ids (split characters, stops across the break), and the settings' limits."""

from __future__ import annotations

import json

import pytest

from knative.gateway import Endpoint, GatewaySettings, GatewaySettingsError
from knative.gateway._assemble import Answer
from knative.gateway._exchange import ProxyRequest
from knative.gateway._inflight import Ticket
from knative.gateway._resume import Firsts, Gaps, Tracker, prepare, resumable_body
from knative.gateway._stream import Liveness
from knative.gateway._upstream import NoFirstByte
from knative.serving._continuation import Continuation


def test_only_single_streamed_generations_are_resumable() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert resumable_body("/v1/chat/completions", json.dumps(chat).encode())
    assert not resumable_body("/v1/chat/completions", json.dumps({**chat, "stream": False})
                              .encode())
    assert resumable_body("/v1/completions", b'{"prompt": "x", "stream": true}')
    assert resumable_body("/v1/completions", b'{"prompt": ["x"], "stream": true}')
    assert not resumable_body("/v1/completions", b'{"prompt": ["x", "y"], "stream": true}')
    assert not resumable_body("/v1/completions", b'{"prompt": "x", "stream": true, "echo": true}')
    assert not resumable_body("/v1/embeddings", b'{"input": "x", "stream": true}')
    assert not resumable_body("/v1/completions", b'{"stream": true, not json')
    assert not resumable_body("/v1/completions",
                              b'{"prompt": "x", "stream": true, "surefoot_resume": {}}')
    # what the replica streams whole, without reporting its token ids
    for extra in ({"n": 2}, {"logprobs": True}, {"top_logprobs": 2},
                  {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        assert not resumable_body("/v1/chat/completions", json.dumps({**chat, **extra}).encode())
    # a format's grammar goes on past the resumed tokens on the replica
    assert resumable_body("/v1/chat/completions", json.dumps(
        {**chat, "response_format": {"type": "json_object"}}).encode())
    assert resumable_body("/v1/chat/completions", json.dumps(
        {**chat, "n": 1, "response_format": {"type": "text"}, "tool_choice": "none",
         "tools": [{"type": "function", "function": {"name": "f"}}]}).encode())
    assert not resumable_body("/v1/completions", b'{"prompt": "x", "stream": true, "logprobs": 2}')
    assert not resumable_body("/v1/completions", b'{"prompt": [818, 7217], "stream": true}')
    assert not resumable_body("/v1/completions", b'{"prompt": [818], "stream": true}')


def ev(obj: dict[str, object], ids: list[int], chars: int) -> bytes:
    body = json.dumps(obj, separators=(",", ":"))
    return f'data: {body[:-1]},"surefoot_resume":{{"t":{ids},"c":{chars}}}}}\n\n'.encode()


def test_tracker_strips_the_field_and_keeps_what_was_sent() -> None:
    t = Tracker()
    role = {"id": "chatcmpl-1", "created": 7, "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    tok = {"id": "chatcmpl-1", "created": 7, "choices": [
        {"index": 0, "delta": {"content": 'he said "finish_reason":"x"'}, "finish_reason": None}]}
    out = t.take(ev(role, [], 0) + ev(tok, [5, 6], 27))
    assert b"surefoot_resume" not in out
    assert [json.loads(e[6:]) for e in out.split(b"\n\n") if e] == [role, tok]
    assert (t.ids, t.chars, t.rid, t.created, t.finished) == ([5, 6], 27, "chatcmpl-1", 7, False)
    body = json.loads(t.resume_body(b'{"stream": true}'))
    assert body["surefoot_resume"] == {"tokens": [5, 6], "chars": 27, "id": "chatcmpl-1",
                                       "created": 7}
    fin = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assert t.take(ev(fin, [7], 27))
    assert t.finished
    assert t.take(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert t.done


def test_tracker_holds_back_an_error_event() -> None:
    t = Tracker()
    assert t.take(b'data: {"error": {"message": "boom"}}\n\n') == b""
    assert t.failed


def test_stall_timeout_follows_the_replicas_gaps_within_floor_and_ceiling() -> None:
    s = GatewaySettings(stall_timeout_min=0.5, stall_timeout_max=4.0, stall_gap_factor=8.0)
    g = Gaps()
    assert g.stall_timeout("a", 0.0, s) == 4.0  # nothing seen yet: the ceiling
    for _ in range(50):
        g.observe("a", 0.02)
    assert g.stall_timeout("a", 0.0, s) == 0.5  # 8 x 20 ms is below the floor
    for _ in range(50):
        g.observe("b", 0.25)
    assert g.stall_timeout("b", 0.0, s) == pytest.approx(2.0, rel=0.01)
    assert g.stall_timeout("b", 10.0, s) == 4.0
    assert 0.5 <= g.stall_timeout("new", 0.0, s) <= 4.0  # the average over all replicas


def test_resume_settings_are_checked() -> None:
    with pytest.raises(GatewaySettingsError) as info:
        GatewaySettings(max_resumes=-1, stall_timeout_min=5.0, stall_timeout_max=1.0,
                        internal_token="short", stall_gap_factor=0)
    msg = str(info.value)
    for name in ("max_resumes", "stall_timeout_min", "internal_token", "stall_gap_factor"):
        assert name in msg
    s = GatewaySettings.from_env({"SUREFOOT_GATEWAY_INTERNAL_TOKEN": "0123456789",
                                  "SUREFOOT_GATEWAY_MAX_RESUMES": "2"})
    assert (s.internal_token, s.max_resumes) == ("0123456789", 2)


# a toy vocabulary: ids are the bytes of their piece (a character split over two ids)
PIECES = {1: b"ab", 2: b"c", 3: "\u00e9".encode()[:1], 4: "\u00e9".encode()[1:], 5: b"STOP",
          6: b"ST", 7: b"OP", 8: b"z"}
EOG = 0


def cont(resumed: tuple[int, ...] = (), sent: int = 0, stop: tuple[str, ...] = (),
         max_tokens: int = 10) -> Continuation:
    def detok(ids: list[int], prev: list[int]) -> bytes:
        return b"".join(PIECES[i] for i in ids)

    return Continuation(detok, lambda t: t == EOG, [99], stop, max_tokens, resumed, sent)


def run(c: Continuation, ids: list[int]) -> str:
    out = c.start()
    for i in ids:
        out += c.feed([i])
    return out


def test_text_from_ids_holds_a_split_character_until_whole() -> None:
    c = cont()
    assert c.feed([1]) == "ab"
    assert c.feed([3]) == ""  # half of é
    assert c.feed([4]) == "\u00e9"
    assert c.feed([EOG]) == ""
    assert c.finish == "stop"
    assert c.generated == [1, 3, 4]


@pytest.mark.parametrize("cut", range(0, 5))
def test_a_continuation_from_any_break_sends_exactly_the_rest(cut: int) -> None:
    ids = [1, 3, 4, 2, 8]
    full = run(cont(), [*ids, EOG])
    first = cont()
    sent = "".join(first.feed([i]) for i in ids[:cut])
    rest = run(cont(tuple(ids[:cut]), len(sent)), [*ids[cut:], EOG])
    assert sent + rest == full == "ab\u00e9cz"


def test_a_stop_across_the_break_still_stops() -> None:
    c = cont(stop=("STOP",))
    assert c.feed([1]) == "ab"
    assert c.feed([6]) == ""  # could be the start of the stop: held back
    resumed = cont((1, 6), 2, stop=("STOP",))
    assert run(resumed, [7, 8]) == ""
    assert resumed.finish == "stop"
    assert resumed.generated == [1, 6, 7]


def test_limits_count_the_resumed_tokens() -> None:
    c = cont((1, 2, 8), 4, max_tokens=3)
    assert c.finish == "length"
    assert c.start() == ""
    assert cont((1, EOG), 2).finish == "stop"


# --- a try with no first event, and plain requests read as streams ---------------------------


def test_first_event_timeout_follows_the_replicas_times_within_floor_and_ceiling() -> None:
    s = GatewaySettings(first_event_timeout_min=0.5, first_event_timeout_max=6.0,
                        first_event_factor=4.0)
    f = Firsts()
    assert f.timeout("a", 0, s) == 6.0  # nothing seen yet: the ceiling
    for _ in range(50):
        f.observe("a", 0.05, 0)
    assert f.timeout("a", 0, s) == 0.5  # 4 x 50 ms is below the floor
    for _ in range(50):
        f.observe("b", 0.5, 1)  # 0.5 s with one try ahead of it: 0.25 s a try
    assert f.timeout("b", 0, s) == pytest.approx(1.0, rel=0.01)
    assert f.timeout("b", 2, s) == pytest.approx(3.0, rel=0.01)  # two tries ahead: longer
    assert f.timeout("b", 20, s) == 6.0
    assert 0.5 <= f.timeout("new", 0, s) <= 6.0  # the average over all replicas


def request(path: str, body: object) -> ProxyRequest:
    return ProxyRequest("POST", path, json.dumps(body).encode(), {}, 0.0, Ticket())


class Clock:
    """Time that passes only when a wait says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_byte_waits_while_the_replica_streams_to_others() -> None:
    s = GatewaySettings(first_event_timeout_min=1.0, first_event_timeout_max=1.0)
    clock, live = Clock(), Liveness()
    probes: list[float] = []
    healthy = [False]

    def probe(host: str, port: int, seconds: float) -> bool:
        probes.append(seconds)
        clock.now += 0.1
        return healthy[0]

    f = Firsts(live, clock, probe)
    a = Endpoint("http://a:1", replica="a")
    streamed = request("/v1/completions", {"prompt": "x", "stream": True})
    prepare(streamed, None)
    assert (streamed.first_event, streamed.resumable) == (True, False)

    def never(seconds: float) -> bool:  # nothing comes
        clock.now += seconds
        return False

    wait = f.waiter(streamed, a, 0, clock.now, clock.now + 60, s)
    assert wait is not None
    with pytest.raises(NoFirstByte):
        wait(never)  # frozen: nothing, and no answer to the health check either
    assert clock.now == pytest.approx(101.1)
    assert probes == [1.0]

    def busy(seconds: float) -> bool:  # queued: the replica streams to another try meanwhile
        clock.now += seconds
        if clock.now < 110:
            live.seen("http://a:1", clock.now)
        return False

    t0 = clock.now
    wait = f.waiter(streamed, a, 0, t0, t0 + 60, s)
    assert wait is not None
    with pytest.raises(NoFirstByte):
        wait(busy)
    assert clock.now == pytest.approx(110.2)  # a timeout after its last event (109.1), a probe
    healthy[0] = True  # a long prefill: no event to anyone, but it answers
    probes.clear()
    wait = f.waiter(streamed, a, 0, clock.now, clock.now + 5, s)
    assert wait is not None
    with pytest.raises(TimeoutError) as info:
        wait(never)  # the try timeout comes first: not a missing first byte
    assert not isinstance(info.value, NoFirstByte)
    assert len(probes) >= 3
    wait = f.waiter(streamed, a, 0, clock.now, clock.now + 60, s)
    assert wait is not None
    wait(lambda seconds: True)  # it comes: no error
    whole = request("/v1/completions", {"prompt": "x"})
    prepare(whole, None)  # no internal token: the replica's own answer, read whole
    assert not whole.first_event
    assert f.waiter(whole, a, 0, clock.now, clock.now + 60, s) is None
    emb = request("/v1/embeddings", {"input": "x", "stream": True})
    prepare(emb, "0123456789")
    assert (emb.first_event, emb.resumable, emb.assemble) == (False, False, False)


def test_a_plain_single_generation_is_asked_for_as_an_internal_stream() -> None:
    token = "0123456789"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    req = request("/v1/chat/completions", chat)
    prepare(req, token)
    assert (req.assemble, req.resumable, req.first_event) == (True, True, True)
    assert req.headers["x-surefoot-internal"] == token
    assert json.loads(req.body) == {**chat, "stream": True,
                                    "stream_options": {"include_usage": True}}
    cont = req.with_body(b"{}")
    assert (cont.assemble, cont.first_event, cont.resumable) == (True, True, True)
    for extra in ({"n": 2}, {"logprobs": True}, {"stream_options": {"include_usage": True}},
                  {"stream": "yes"},
                  {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        other = request("/v1/chat/completions", {**chat, **extra})
        prepare(other, token)
        assert (other.assemble, other.resumable) == (False, False), extra
        assert json.loads(other.body) == {**chat, **extra}  # sent as the client wrote it
    done = request("/v1/completions", {"prompt": "x", "stream": False})
    prepare(done, token)
    assert done.assemble
    assert json.loads(done.body)["stream"] is True
    prepare(plain := request("/v1/completions", {"prompt": "x"}), None)
    assert not plain.assemble


def chunk(obj: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def test_the_answer_assembled_from_a_chat_stream() -> None:
    head = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "system_fingerprint": "fp"}
    a = Answer(chat=True)
    for obj in (
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "1, 2"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": ", 3"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                                          "total_tokens": 7}},
    ):
        a.add(chunk(obj)[6:])
    a.add(b"[DONE]")
    assert a.done
    assert a.body() == {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 5, "model": "m",
        "system_fingerprint": "fp",
        "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                     "message": {"role": "assistant", "content": "1, 2, 3", "refusal": None}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}
    c = Answer(chat=False)
    c.add(chunk({**head, "object": "text_completion", "choices": [
        {"index": 0, "text": "ab", "logprobs": None, "finish_reason": "stop"}]})[6:])
    assert c.body()["choices"] == [{"index": 0, "text": "ab", "logprobs": None,
                                    "finish_reason": "stop"}]
    assert c.body()["object"] == "text_completion"
    e = Answer(chat=False)
    e.add(b'{"error": {"message": "no replica", "type": "upstream_timeout", "code": 504}}')
    assert e.error == {"message": "no replica", "type": "upstream_timeout", "code": 504}


@pytest.mark.parametrize(("var", "value"), [
    ("FIRST_EVENT_TIMEOUT_MIN", "soon"), ("FIRST_EVENT_TIMEOUT_MIN", "-1"),
    ("FIRST_EVENT_TIMEOUT_MAX", "0"), ("FIRST_EVENT_TIMEOUT_MAX", "1e9"),
    ("FIRST_EVENT_FACTOR", "0.5"), ("FIRST_EVENT_FACTOR", "many"),
])
def test_bad_first_event_settings_name_their_variable(var: str, value: str) -> None:
    name = f"SUREFOOT_GATEWAY_{var}"
    with pytest.raises(GatewaySettingsError) as info:
        GatewaySettings.from_env({name: value})
    assert name in str(info.value)


def test_first_event_floor_above_its_ceiling_is_refused() -> None:
    with pytest.raises(GatewaySettingsError) as info:
        GatewaySettings.from_env({"SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MIN": "5",
                                  "SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MAX": "2"})
    assert "SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MIN" in str(info.value)
    assert "first_event_timeout_max" in str(info.value)
    s = GatewaySettings.from_env({"SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MIN": "0.5",
                                  "SUREFOOT_GATEWAY_FIRST_EVENT_TIMEOUT_MAX": "3",
                                  "SUREFOOT_GATEWAY_FIRST_EVENT_FACTOR": "6"})
    assert (s.first_event_timeout_min, s.first_event_timeout_max,
            s.first_event_factor) == (0.5, 3.0, 6.0)

"""The pieces of stream resume that need no model: which requests are resumable, the events'
internal field stripped and read, the stall timeout from observed gaps, the text rebuilt from
token ids (split characters, stops across the break), and the settings' limits."""

from __future__ import annotations

import json

import pytest

from knative.gateway import GatewaySettings, GatewaySettingsError
from knative.gateway._resume import Gaps, Tracker, resumable_body
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
                  {"response_format": {"type": "json_object"}},
                  {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        assert not resumable_body("/v1/chat/completions", json.dumps({**chat, **extra}).encode())
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

"""The prompt a conversation becomes: a system turn reaches the model even where the chat
format (llama-cpp-python's ``gemma``, the default model's) would drop it."""

from __future__ import annotations

import pytest

from knative.serving import LlamaCppBackend
from knative.serving._openai import ChatMessage, SamplingParams

PARAMS = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=1)


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    b = LlamaCppBackend(n_ctx=256, n_threads=2, slots=1)
    b.load()
    return b


def _prompt(backend: LlamaCppBackend, messages: tuple[ChatMessage, ...]) -> str:
    spec = backend.spec(messages, PARAMS)
    data = bytes(backend.llm.detokenize(list(spec.tokens), special=True))
    return data.decode("utf-8", errors="replace")


def test_a_system_turn_goes_before_the_first_user_turn(backend):
    text = _prompt(backend, (ChatMessage("system", "Always answer in French."),
                             ChatMessage("user", "Name a colour.")))
    assert "Always answer in French." in text
    assert text.index("Always answer in French.") < text.index("Name a colour.")
    assert text.count("<start_of_turn>user") == 1


def test_a_conversation_without_a_system_turn_is_unchanged(backend):
    text = _prompt(backend, (ChatMessage("user", "Name a colour."),
                             ChatMessage("assistant", "Blue."),
                             ChatMessage("user", "Another?")))
    assert text.count("<start_of_turn>user") == 2
    assert "Blue." in text

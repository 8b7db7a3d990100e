"""The single-sequence engine starts a prompt from the one the engine read just before, where
the two share a prefix, and gives the tokens a fresh read gives."""

from __future__ import annotations

from typing import Any

import pytest

from knative.serving import LlamaCppBackend
from knative.serving._openai import ChatMessage, SamplingParams
from knative.serving._tokens import PromptCache

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, top_p=1.0, seed=1)
SYSTEM = ("You answer every question about the weather in one careful sentence, and you never "
          "use lists. ") * 2


def _chat(question: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", SYSTEM), ChatMessage("user", question))


def _run(backend: LlamaCppBackend, question: str, reads: list[int]) -> list[int]:
    llm = backend.llm
    real = llm.eval

    def counted(tokens: Any) -> None:
        reads.append(len(tokens))
        real(tokens)

    llm.eval = counted
    try:
        return [t for d in backend.stream_tokens(_chat(question), GREEDY) for t in d.tokens]
    finally:
        del llm.eval


def test_a_prompt_sharing_the_last_ones_prefix_reads_only_the_rest(gemma_serial):
    gemma_serial.complete("An unrelated prompt", GREEDY)  # whatever an earlier test left
    reads: list[int] = []
    _run(gemma_serial, "What is rain?", reads)
    first = reads[0]
    reads.clear()
    hail = _run(gemma_serial, "What is hail made of?", reads)
    assert 8 <= reads[0] < first - 16  # the system prompt is not read again

    # after another job the context is not trusted: the whole prompt is read, same tokens
    gemma_serial.complete("An unrelated prompt", GREEDY)
    reads.clear()
    assert _run(gemma_serial, "What is hail made of?", reads) == hail
    assert reads[0] > first - 8


@pytest.mark.parametrize(("cached", "job", "tokens", "start", "kept"), [
    (tuple(range(40)), 5, tuple(range(30)) + (99,) * 20, 50, 30),  # the shared prefix
    (tuple(range(40)), 4, tuple(range(30)) + (99,) * 20, 50, 0),  # another job ran between
    (tuple(range(40)), 5, tuple(range(40)), 40, 32),  # at least 8 rows are read
    (tuple(range(40)), 5, tuple(range(6)), 6, 0),  # a short prompt is read whole
    ((), 5, tuple(range(30)), 30, 0),  # nothing read as a prompt
])
def test_what_a_prompt_may_keep(cached, job, tokens, start, kept):
    assert PromptCache(tokens=cached, job=4).reusable(job, tokens, start) == kept


def test_a_restored_checkpoint_keeps_the_prompt_it_read(gemma_serial):
    reads: list[int] = []
    gemma_serial.complete("An unrelated prompt", GREEDY)
    fresh = _run(gemma_serial, "Why is the sky grey before snow?", reads)
    whole = reads[0]
    blobs = gemma_serial.save_state()
    assert whole - 8 <= int(blobs["prompt_exact"]) <= whole
    gemma_serial.complete("An unrelated prompt", GREEDY)  # the context moves on
    gemma_serial.load_state(blobs)
    reads.clear()
    assert _run(gemma_serial, "Why is the sky grey before snow?", reads) == fresh
    assert reads[0] == 8  # only the last prompt tokens are read again


def test_a_checkpoint_with_a_bad_prompt_count_is_refused(gemma_serial):
    from knative.serving import BackendError

    blobs = gemma_serial.save_state()
    with pytest.raises(BackendError, match="prompt_exact"):
        gemma_serial.load_state({**blobs, "prompt_exact": b"many"})

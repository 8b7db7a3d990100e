"""The batching engine: sequences that share decode steps, join mid-batch, leave when their
client goes, keep a shared prefix once, and sample under a grammar next to free ones."""

from __future__ import annotations

import json
import queue
import re
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from knative.serving import LlamaCppBackend, ServeSettings
from knative.serving._liveness import ClientGone, client_alive
from knative.serving._openai import SamplingParams
from knative.serving._sampling import completion_spec
from tests.knative.test_replica_process import _start

openai = pytest.importorskip("openai")

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, top_p=1.0, seed=1)
PROMPTS = ["The history of the printing press begins", "Once upon a time in a faraway kingdom",
           "Photosynthesis is the process by which", "A recipe for bread needs flour, water,"]


@pytest.fixture(scope="module")
def batched() -> LlamaCppBackend:
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=2)
    backend.load()
    return backend


def test_an_invariant_batching_replica_loads_its_weights_once(batched):
    # the single-sequence context and the batch share one model, on the repacked layouts
    # whose kernels agree by rows on the project's build (tests/knative/test_layouts.py)
    assert batched.llm.model_params.use_extra_bufts is True
    assert batched._batcher is not None
    assert batched._batcher._model is batched.llm._model

def test_a_batching_replica_makes_every_decode_on_the_batch_thread(monkeypatch):
    # the load's probe and prompt logprobs too: a second thread's OpenMP team would slow
    # every decode after it (LlamaCppBackend's docstring)
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    threads: list[str] = []
    real = lib.llama_decode

    def decode(ctx: Any, batch: Any) -> int:
        threads.append(threading.current_thread().name)
        return int(real(ctx, batch))

    monkeypatch.setattr(lib, "llama_decode", decode)
    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=2)
    backend.load()
    spec = backend.spec(PROMPTS[0], GREEDY)
    assert len(backend.prompt_logprobs(spec, 2)) == len(spec.tokens) - 1
    assert backend.complete(PROMPTS[1], GREEDY).text
    assert len(threads) > 10
    assert set(threads) == {f"batch-{backend.model_id}"}



@pytest.mark.parametrize("slots", [2, 1])
def test_embeddings_compute_on_the_batch_thread_where_the_replica_batches(slots):
    # one OpenMP team per replica (knative.serving._embedding's docstring); the single-
    # sequence engine holds its thread for whole generations, so embeddings keep their own
    import torch

    from knative.serving._runtime import build_backends

    gen, emb = build_backends(ServeSettings(n_ctx=256, n_threads=2, slots=slots))
    assert gen is not None
    assert emb is not None
    gen.load()
    emb.load()
    names: set[str] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: names.add(threading.current_thread().name))
    try:
        vectors, _ = emb.embed(("a lighthouse on a cliff",))
    finally:
        hook.remove()
    assert len(vectors[0]) == emb.dimensions
    assert names == {f"batch-{gen.model_id}" if slots > 1 else f"engine-{emb.model_id}"}


def test_the_fused_attention_is_on_unless_the_setting_says_off(batched):
    import llama_cpp

    assert batched.llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert batched._batcher is not None
    assert batched._batcher._replay_rows == 4
    assert ServeSettings.from_env({}).flash_attn is True
    assert ServeSettings.from_env({"SUREFOOT_FLASH_ATTN": "off"}).flash_attn is False
    with pytest.raises(ValueError, match="SUREFOOT_FLASH_ATTN"):
        ServeSettings.from_env({"SUREFOOT_FLASH_ATTN": "sometimes"})


def test_slots_setting_reads_the_environment():
    assert ServeSettings.from_env({"SUREFOOT_SLOTS": "3"}).slots == 3
    with pytest.raises(ValueError, match="slots"):
        ServeSettings.from_env({"SUREFOOT_SLOTS": "0"})


def test_prompt_cache_setting_reads_the_environment():
    assert ServeSettings().prompt_cache_mb == 256
    assert ServeSettings.from_env({"SUREFOOT_PROMPT_CACHE_MB": "0"}).prompt_cache_mb == 0
    with pytest.raises(ValueError, match="prompt_cache_mb"):
        ServeSettings.from_env({"SUREFOOT_PROMPT_CACHE_MB": "-1"})
    with pytest.raises(ValueError, match="PROMPT_CACHE_MB"):
        ServeSettings.from_env({"SUREFOOT_PROMPT_CACHE_MB": "lots"})


def test_gather_setting_reads_the_environment():
    assert ServeSettings.from_env({}).gather_ms == 2.0
    assert ServeSettings.from_env({"SUREFOOT_GATHER_MS": "0"}).gather_ms == 0.0
    with pytest.raises(ValueError, match="gather_ms"):
        ServeSettings.from_env({"SUREFOOT_GATHER_MS": "-1"})
    with pytest.raises(ValueError, match="GATHER_MS"):
        ServeSettings.from_env({"SUREFOOT_GATHER_MS": "soon"})


class _Clocked(queue.SimpleQueue[int]):
    """A queue whose waits pass on a fake clock: each ``get`` waits ``gap`` (or its whole
    timeout, then is empty, when ``gap`` is longer)."""

    def __init__(self, now: list[float], gaps: list[float]) -> None:
        super().__init__()
        self.now, self.gaps = now, gaps

    def get(self, block: bool = True, timeout: float | None = None) -> int:
        gap = self.gaps.pop(0) if self.gaps else float("inf")
        if timeout is not None and gap > timeout:
            self.now[0] += timeout
            raise queue.Empty
        self.now[0] += gap
        return len(self.gaps)


def test_a_burst_is_what_comes_within_the_quiet_gap_for_the_window():
    from knative.serving._serial import burst

    now = [0.0]

    def taken(gaps: list[float], held: int = 0, enough: int = 99) -> list[int]:
        q = _Clocked(now, gaps)
        for i in range(held):
            q.put(100 + i)
        out: list[int] = []
        for item in burst(q, -1, 0.002, 0.010, lambda: now[0], lambda: len(out) >= enough):
            out.append(item)
        return out

    # what the inbox holds is taken whatever the timings
    assert taken([], held=2) == [-1, 100, 101]
    # arrivals 1 ms apart are taken; a gap over 2 ms ends the burst
    assert len(taken([0.001, 0.001, 0.003, 0.001])) == 3
    # 10 ms in all, however close the arrivals
    assert len(taken([0.0015] * 20)) == 1 + 6
    # enough (the slots are full): no wait
    assert taken([0.001, 0.001], held=1, enough=2) == [-1, 100]


def test_an_idle_engine_reads_the_prompts_of_a_burst_in_one_call(batched):
    engine = batched._batcher
    calls: list[list[int]] = []
    decode = engine._decode

    def recorded(call: list[Any]) -> bool:
        calls.append([e[0].slot for e in call])
        return decode(call)

    quiet = engine.gather_quiet
    engine._decode, engine.gather_quiet = recorded, 0.5
    prompts = [PROMPTS[0], PROMPTS[1] + " in the year of"]  # unequal: one is padded
    padded = engine.stats.padding_rows
    try:
        _together(batched, prompts, GREEDY)
    finally:
        del engine._decode
        engine.gather_quiet = quiet
    assert sorted(calls[0]) == [0, 1]
    assert engine.stats.padding_rows > padded
    # the padding cells are gone: each slot's cache ends at the tokens it holds
    import llama_cpp

    ends = batched._batcher.call(lambda: [
        int(llama_cpp.llama_memory_seq_pos_max(engine._mem, i)) for i in range(2)])
    assert ends == [len(engine._cache[i]) - 1 for i in range(2)]


def test_concurrent_openai_streams_give_the_sequential_texts():
    proc, url = _start(env={"SUREFOOT_SLOTS": "4"})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

        def run(prompt: str) -> str:
            stream = client.completions.create(model="gemma-3-270m", prompt=prompt, max_tokens=6,
                                               temperature=0, seed=1, stream=True)
            return "".join(c.choices[0].text for c in stream)

        alone = [run(p) for p in PROMPTS]
        together: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(PROMPTS[i])))
                   for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [together[i] for i in range(len(PROMPTS))] == alone
        metrics = httpx.get(f"{url}/metrics").text
        assert "surefoot_engine_active_slots 0.0" in metrics
        computed = re.search(r"^surefoot_engine_prompt_tokens_computed_total (\S+)$", metrics,
                             re.MULTILINE)
        assert computed is not None
        assert float(computed.group(1)) > 0
        # some step advanced more than one sequence: the four shared steps
        several = re.search(r'^surefoot_engine_step_sequences_bucket\{le="1.0"\} (\S+)$',
                            metrics, re.MULTILINE)
        steps = re.search(r"^surefoot_engine_step_sequences_count (\S+)$", metrics, re.MULTILINE)
        assert several is not None
        assert steps is not None
        assert float(several.group(1)) < float(steps.group(1))
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_request_joins_a_running_batch(batched):
    long = batched.stream_complete(PROMPTS[0], replace(GREEDY, max_tokens=48))
    first = next(long)
    alone = batched.complete(PROMPTS[1], GREEDY).text  # runs while the long one is live
    assert batched.engine_stats()["active"] >= 1
    rest = list(long)
    assert rest[-1].finish_reason == "length"
    assert first.text + "".join(d.text for d in rest)
    assert alone
    assert batched.complete(PROMPTS[1], GREEDY).text == alone


def test_a_stream_whose_client_goes_frees_its_slot(batched):
    a = batched.stream_complete(PROMPTS[0], replace(GREEDY, max_tokens=64))
    b = batched.stream_complete(PROMPTS[1], replace(GREEDY, max_tokens=64))
    next(a)
    next(b)
    a.close()  # what the server does when the client disconnects
    out = batched.complete(PROMPTS[2], GREEDY)  # needs the slot a held
    assert out.completion_tokens > 0
    b.close()


def test_a_sequence_whose_client_hangs_up_leaves_at_the_next_step(batched):
    """Asked before each step (knative.serving._liveness): no write has to fail first."""
    here = threading.Event()
    here.set()
    token = client_alive.set(here.is_set)
    try:
        a = batched.stream_complete(PROMPTS[0], replace(GREEDY, max_tokens=64))
        got = [next(a)]  # the engine takes the probe when the sequence asks for a slot
    finally:
        client_alive.reset(token)
    b = batched.stream_complete(PROMPTS[1], replace(GREEDY, max_tokens=64))
    next(b)
    here.clear()  # the client hangs up; a is never closed by its consumer
    with pytest.raises(ClientGone):
        got.extend(a)
    assert len(got) < 32
    out = batched.complete(PROMPTS[2], GREEDY)  # runs in the slot a held, while b is live
    assert out.completion_tokens > 0
    b.close()


def test_a_client_gone_during_a_steps_first_call_is_not_decoded_in_the_next():
    from knative.serving._engine import BatchEngine

    engine = BatchEngine("poll", 4, 1.0)
    engine._pad_below = 2048
    here = threading.Event()
    here.set()
    gone, other, reader = (_fake(0, 5, generating=True), _fake(1, 5, generating=True),
                           _fake(2, 12))
    gone.alive = here.is_set
    engine._slots[:3] = [gone, other, reader]
    decoded: list[list[int]] = []

    def decode(call: list[Any]) -> bool:
        decoded.append([e[0].slot for e in call])
        here.clear()  # the client hangs up while the prompt is read
        return True

    engine._decode = decode  # type: ignore[method-assign]
    engine._step()
    assert decoded == [[2], [1]]
    assert engine._slots[0] is None
    assert isinstance(gone.out.get_nowait()[1], ClientGone)


def test_a_plain_completion_whose_client_hangs_up_stops():
    """A non-streamed answer writes nothing until it is done, so no failed write would end
    it: the engine sees the client go and the replica logs 499."""
    proc, url = _start(env={"SUREFOOT_SLOTS": "2"})
    try:
        body = json.dumps({"model": "gemma-3-270m", "prompt": PROMPTS[1], "max_tokens": 250,
                           "temperature": 0, "ignore_eos": True}).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 30
            while "surefoot_engine_active_slots 1.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline, "the completion never started"
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while True:
            metrics = httpx.get(f"{url}/metrics").text
            ended = re.findall(r'^surefoot_requests_total\{route="/v1/completions",'
                               r'status="(\d+)"\}', metrics, re.MULTILINE)
            if ended:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ended == ["499"], "the completion ran to its end"
        assert "surefoot_engine_active_slots 0.0" in metrics
        assert batched_tokens(metrics) < 250
    finally:
        proc.terminate()
        proc.wait(30)


def batched_tokens(metrics: str) -> float:
    found = re.search(r"^surefoot_generated_tokens_total\{[^}]*\} (\S+)$", metrics,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_shared_prefix_is_computed_once(batched):
    system = "You are a careful assistant who answers in one short sentence. " * 4
    prompts = [system + q for q in ("What is rain?", "What is snow?")]
    one = len(batched.llm.tokenize(prompts[0].encode(), add_bos=True, special=True))
    before = batched.engine_stats()["prompt_tokens_computed"]
    results: dict[int, str] = {}
    threads = [threading.Thread(
        target=lambda i=i: results.__setitem__(i, batched.complete(prompts[i], GREEDY).text))
        for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    computed = batched.engine_stats()["prompt_tokens_computed"] - before
    assert computed <= 1.2 * one
    assert all(results.values())


def _burst_in_order(backend: LlamaCppBackend, prompts: list[str]) -> None:
    """``prompts`` reach the idle engine as one burst, in this order: the engine thread is
    held in a job until every request is in its inbox."""
    engine = backend._batcher
    assert engine is not None
    held, release = threading.Event(), threading.Event()
    blocker = threading.Thread(target=engine.call,
                               args=(lambda: (held.set(), release.wait(30)),))
    blocker.start()
    assert held.wait(30)
    threads = []
    for n, prompt in enumerate(prompts, 1):
        t = threading.Thread(target=backend.complete, args=(prompt, GREEDY))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 30
        while engine._inbox.qsize() < n and time.monotonic() < deadline:
            time.sleep(0.001)
    release.set()
    for t in [blocker, *threads]:
        t.join()


def test_a_burst_that_fills_the_free_slots_takes_each_its_own_cached_prompt(batched):
    # prefixes shorter than a long one (32 tokens), in the other order than before: each
    # request still finds the slot that holds its prompt
    prompts = ["A lighthouse keeper counts the ships that pass the rocks each night",
               "Three bakers share one oven on the corner of the market square"]
    lengths = [len(batched.llm.tokenize(p.encode(), add_bos=True, special=True))
               for p in prompts]
    assert max(lengths) < 32
    _burst_in_order(batched, prompts)
    before = batched.engine_stats()["prompt_tokens_reused"]
    _burst_in_order(batched, prompts[::-1])
    reused = batched.engine_stats()["prompt_tokens_reused"] - before
    assert reused == sum(n - 8 for n in lengths)  # 8 prompt tokens are always read


def test_a_lone_request_takes_the_lowest_slot_with_the_prefix_another_free_slot_holds(batched):
    other = "Seven sailors mend a net on the pier while gulls circle above them"
    prompt = "Four foxes cross a frozen river at dawn in search of a warmer den"
    n = len(batched.llm.tokenize(prompt.encode(), add_bos=True, special=True))
    _burst_in_order(batched, [other, prompt])  # the prompt's tokens stay in slot 1
    before = batched.engine_stats()["prompt_tokens_reused"]
    assert batched.complete(prompt, GREEDY).text  # slot 0, the lowest free one
    assert batched.engine_stats()["prompt_tokens_reused"] - before == n - 8


def test_a_prompt_its_slot_no_longer_holds_comes_back_from_host_memory():
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=2,
                              prompt_cache_mb=64)
    backend.load()
    prompts = ["An old clockmaker repairs the tower bell of a quiet mountain town",
               "Two rivers meet below the castle where the merchants trade their salt",
               "A young astronomer maps the comets that cross the winter sky each year"]
    n = len(backend.llm.tokenize(prompts[0].encode(), add_bos=True, special=True))
    fresh = backend.complete(prompts[0], GREEDY).text
    for other in prompts[1:]:  # each takes slot 0, the lowest free one
        backend.complete(other, GREEDY)
    stats = backend.engine_stats()
    assert stats["host_cache_bytes"] > 0
    again = backend.complete(prompts[0], GREEDY).text
    after = backend.engine_stats()
    assert after["host_cache_hits"] - stats["host_cache_hits"] == 1
    assert after["prompt_tokens_reused"] - stats["prompt_tokens_reused"] == n - 8
    assert again == fresh  # cells put back bit for bit: the text of a fresh read


def test_a_grammar_constrained_and_a_free_sequence_share_a_batch(batched):
    from llama_cpp import LlamaGrammar

    grammar = LlamaGrammar.from_string('root ::= ("yes" | "no") "."', verbose=False)
    llm = batched.llm
    kwargs = {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 1}
    constrained = replace(completion_spec(llm, "Is the sky blue? Answer:", kwargs),
                          grammar=grammar)
    free = completion_spec(llm, PROMPTS[3], kwargs)
    results: dict[str, str] = {}

    def run(name: str, spec: object) -> None:
        results[name] = "".join(d.text for d in batched.generate(spec))  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=("g", constrained)),
               threading.Thread(target=run, args=("f", free))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["g"].strip() in ("yes.", "no.")
    assert results["f"]
    assert results["f"] not in ("yes.", "no.")


def test_a_greedy_pick_read_from_the_logits_is_the_chains(batched):
    from llama_cpp import LlamaGrammar

    from knative.serving._sampling import Argmax, sampler_factory

    llm = batched.llm
    spec = completion_spec(llm, PROMPTS[0], batched._kwargs(GREEDY))

    def picks() -> list[tuple[int, int]]:
        fast = sampler_factory(llm, spec)()
        assert isinstance(fast, Argmax)
        llm.reset()
        llm.eval(list(spec.tokens))
        out = []
        for _ in range(8):
            pick = fast.sample(llm._ctx, -1)
            chain = int(fast._chain.sample(llm._ctx, -1))
            out.append((pick, chain))
            llm.eval([chain])
        return out

    assert all(pick == chain for pick, chain in batched._batcher.call(picks))
    # a penalty, a temperature or a grammar before the pick keeps the chain's own sampling
    others = [replace(spec, sampling={**spec.sampling, "repeat_penalty": 1.1}),
              replace(spec, sampling={**spec.sampling, "temperature": 0.5}),
              replace(spec, grammar=LlamaGrammar.from_string('root ::= "yes"', verbose=False))]
    built = batched._batcher.call(lambda: [sampler_factory(llm, s)() for s in others])
    assert not any(isinstance(b, Argmax) for b in built)


@pytest.fixture(scope="module")
def full() -> LlamaCppBackend:
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=60, slots=8)
    backend.load()
    return backend


def _together(backend: LlamaCppBackend, prompts: list[str], params: SamplingParams) -> list[str]:
    out: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, backend.complete(prompts[i], params).text)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[i] for i in range(len(prompts))]


def test_greedy_text_is_the_same_alone_and_in_a_full_batch(full):
    # eight at once span two calls of four rows; alone, each step is one row
    prompts = [f"{p} (part {i})" for i, p in enumerate(PROMPTS * 2)]
    params = replace(GREEDY, max_tokens=20)
    alone = [full.complete(p, params).text for p in prompts]
    padded = full.engine_stats()["padding_rows"]
    assert _together(full, prompts, params) == alone
    # prompts of unequal lengths were read in shared calls, padded to one length
    assert full.engine_stats()["padding_rows"] > padded
    assert _together(full, prompts[:3], params) == alone[:3]


def test_a_reused_prefix_gives_the_text_of_a_fresh_read(full, batched):
    system = "You answer every question about the weather in one careful sentence. " * 3
    params = replace(GREEDY, max_tokens=12)
    full.complete(system + "What is rain?", params)
    before = full.engine_stats()["prompt_tokens_reused"]
    reused = full.complete(system + "What is hail made of?", params).text
    assert full.engine_stats()["prompt_tokens_reused"] - before >= 32
    assert batched.complete(system + "What is hail made of?", params).text == reused


def test_a_resumed_stream_goes_on_as_the_uninterrupted_one(full):
    params = replace(GREEDY, max_tokens=24)
    whole = list(full.stream_tokens(PROMPTS[2], params))
    ids = [t for d in whole for t in d.tokens]
    text = "".join(d.text for d in whole)
    assert len(ids) == 24
    cuts = [(sum(len(d.tokens) for d in whole[:j]), sum(len(d.text) for d in whole[:j]))
            for j in (1, 6, 13)]
    for k, sent in cuts:
        before = full.engine_stats()["decodes"]
        rest = list(full.stream_tokens(PROMPTS[2], params, resumed=tuple(ids[:k]),
                                       sent_chars=sent))
        assert ids[:k] + [t for d in rest for t in d.tokens] == ids
        assert text[:sent] + "".join(d.text for d in rest) == text
        assert rest[-1].finish_reason == "length"
        # the resumed tokens go four to a call: the prompt read (or its cache reused), then
        # ceil(k / 4) calls, then a call a token for the rest but the last
        calls = full.engine_stats()["decodes"] - before
        assert calls - (-(-k // 4) + 23 - k) in (0, 1)


def _fake(slot: int, prompt: int, kv: int = 0, decoded_from: int | None = None,
          generating: bool = False) -> Any:
    from knative.serving._engine import _Request
    from knative.serving._sampling import SeqSpec

    req = _Request(SeqSpec(tokens=tuple(range(prompt)), max_tokens=8,
                           decoded_from=decoded_from), lambda: None)
    req.slot = slot
    req.kv_tokens = list(range(kv))
    req.pending = [0] if generating else list(range(kv, prompt))
    req.prefilling = not generating
    return req


@pytest.mark.parametrize("fused", [True, False])
def test_the_invariant_plan_keeps_every_row_in_its_class(fused):
    from knative.serving._engine import BatchEngine

    engine = BatchEngine("plan", 8, 1.0)
    engine._fused, engine._replay_rows = fused, 4 if fused else 1
    engine._pad_below = 2048
    engine._slots[:8] = [
        _fake(0, 5, generating=True), _fake(1, 5, generating=True),
        _fake(2, 5, generating=True),
        _fake(3, 30, kv=20, decoded_from=20),  # 10 resumed tokens to decode again
        _fake(4, 20), _fake(5, 13),  # prompts to read
        _fake(6, 5),  # a prompt under the prefill rows
        _fake(7, 11),
    ]
    calls = engine._plan()
    shape = [[(r.slot, take, want, pad) for r, take, want, pad in call] for call in calls]
    # prompt chunks first: those within 8 tokens of each other in one call, each padded to
    # the longest (llama.cpp splits a call of unequal chunks into sub-batches of equal ones),
    # one under the prefill rows alone; generated tokens and the resumed ones in calls of at
    # most four rows
    assert shape == [[(4, 20, True, 0), (5, 13, True, 7)], [(7, 11, True, 0)],
                     [(6, 5, True, 0)],
                     [(0, 1, True, 0), (1, 1, True, 0), (2, 1, True, 0), (3, 1, False, 0)]]
    engine._slots[:3] = [None] * 3
    # with the fused attention, four resumed tokens of one sequence share a call
    assert [(r.slot, take) for r, take, *_ in engine._plan()[-1]] == [(3, 4 if fused else 1)]


def test_padding_stays_within_the_sliding_window_and_the_batch():
    from knative.serving._steps import Limits, merged

    lim = Limits(invariant=True, decode_rows=4, prefill_rows=8, replay_rows=4, chunk=64,
                 n_batch=64, pad_below=512)
    near = _fake(1, 510, kv=500)  # 10 to read at 500: padded to 16 it would pass 512
    reads = [(_fake(0, 16), 16, True, 0), (near, 10, True, 0), (_fake(2, 12), 12, True, 0),
             (_fake(3, 15), 15, True, 0), (_fake(4, 14), 14, True, 0)]
    shape = [[(r.slot, take, pad) for r, take, _, pad in call] for call in merged(reads, lim)]
    # four chunks of 16 fill the batch of 64; the fifth waits for a call of its own
    assert shape == [[(0, 16, 0), (2, 12, 4), (3, 15, 1), (4, 14, 2)], [(1, 10, 0)]]


def test_without_invariance_every_step_is_one_decode():
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=4,
                              batch_invariant=False)
    backend.load()
    params = replace(GREEDY, max_tokens=8)
    texts = _together(backend, PROMPTS, params)
    assert all(texts)
    assert backend.engine_stats()["last_batch_seqs"] >= 1
    assert backend.complete(PROMPTS[0], params).text == backend.complete(PROMPTS[0], params).text


def test_batch_invariance_setting_reads_the_environment():
    assert ServeSettings.from_env({}).batch_invariant is True
    assert ServeSettings.from_env({"SUREFOOT_BATCH_INVARIANT": "off"}).batch_invariant is False
    with pytest.raises(ValueError, match="SUREFOOT_BATCH_INVARIANT"):
        ServeSettings.from_env({"SUREFOOT_BATCH_INVARIANT": "maybe"})


def test_a_resumed_seeded_stream_draws_what_the_uninterrupted_one_draws(full):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    whole = list(full.stream_tokens(PROMPTS[1], params))
    ids = [t for d in whole for t in d.tokens]
    assert ids == [t for d in full.stream_tokens(PROMPTS[1], params) for t in d.tokens]
    k = sum(len(d.tokens) for d in whole[:7])
    sent = sum(len(d.text) for d in whole[:7])
    rest = list(full.stream_tokens(PROMPTS[1], params, resumed=tuple(ids[:k]), sent_chars=sent))
    assert ids[:k] + [t for d in rest for t in d.tokens] == ids
    other = replace(params, seed=8)
    assert [t for d in full.stream_tokens(PROMPTS[1], other) for t in d.tokens] != ids


def test_position_seeds_differ_by_seed_and_place():
    from knative.serving._sampling import position_seed

    seeds = {position_seed(s, p) for s in range(4) for p in range(64)}
    assert len(seeds) == 4 * 64
    assert all(0 <= x < 2**32 for x in seeds)


def test_sigterm_with_several_live_streams_finishes_them_all():
    import json
    import signal

    proc, url = _start("--grace-seconds", "60", env={"SUREFOOT_SLOTS": "4"})
    events: dict[int, list[str]] = {i: [] for i in range(3)}
    started = [threading.Event() for _ in range(3)]

    def consume(i: int) -> None:
        body = {"prompt": PROMPTS[i], "max_tokens": 40, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events[i].append(line[6:])
                    started[i].set()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in started)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        for i in range(3):
            assert events[i][-1] == "[DONE]", events[i][-3:]
            last = json.loads(events[i][-2])
            assert last["choices"][0]["finish_reason"] == "length"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

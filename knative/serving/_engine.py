"""Continuous batching: every live sequence of a replica advances in one ``llama_decode`` a step.

One engine thread owns a llama.cpp context whose KV cache holds one sequence per slot (the
sequence id is the slot number, the cache is unified so sequences may share cells). Each step
puts into one batch the next token of every decoding sequence and a bounded chunk of the
prompts still being read, decodes once, then samples each sequence from its own row of logits
with its own sampler chain. New requests take a free slot at the next step and finished or
abandoned ones leave it; a long prompt is read a chunk a step so it does not stall the tokens
of the others. A slot keeps the tokens whose KV it holds after its request ends: a new prompt
sharing a prefix with a slot (a system prompt, a previous turn) starts past that prefix, taken
from a free slot or copied from a live one, and a request whose prefix another is reading at
that moment waits for it instead of reading it twice.

The thread also runs the engine's other work (loading, state snapshots) between steps, so all
calls into llama.cpp come from one thread and one OpenMP team.

Batch invariance (on by default). llama.cpp's CPU kernels take different paths by the number of
rows a decode holds, and those paths round differently. Measured on an AVX2 CPU: a call of 1 to
7 rows gives every row the result it has alone, 8 rows or more another; on stock llama.cpp the
weights the CPU backend repacks add their own split (:mod:`._layouts`). Without the fused
attention kernel, several rows of one sequence also differ from one a call. A sequence decoded
alone or among seven others would then give other tokens. Generated tokens go at most
``decode_rows`` (4, the default slots) to a call (costs by rows: ``bench/decode_rows.py``). In
invariant mode the engine keeps every token in one class whatever else runs: generated tokens
are decoded a token per sequence in calls of at most ``decode_rows`` rows, prompt tokens in
chunks of at least ``prefill_rows`` rows of each sequence (several sequences' chunks in one call
padded to one length, :mod:`knative.serving._steps`; a prompt shorter than that in one call of
its own), on the weight layouts whose kernels agree by rows and a KV stream per slot (llama.cpp
forms a sub-batch of the sequences whose slot numbers follow each other, so new requests take
the lowest free slot, unless they fill every free slot or one saves a long prefix). With the
fused attention, the tokens of a resumed stream that an earlier run generated are decoded
again up to ``decode_rows`` in a call; without it, one a step. A
cached prefix is reused only where it was computed as a prompt would be, so a resumed stream
goes on as it would have.
The price is throughput at high concurrency (a full batch runs as several calls); with
``invariant=False`` every step is one decode on one unified cache with the repacked
weights, as llama.cpp's own server runs it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from knative.serving._host_cache import Entry as HostEntry
from knative.serving._host_cache import HostCache
from knative.serving._layouts import repacked, rows_agree
from knative.serving._liveness import Alive, ClientGone, client_alive
from knative.serving._sampling import SeqSpec, StopText, common_prefix
from knative.serving._serial import Claim, burst, drained
from knative.serving._steps import Entry, Limits, plan

log = logging.getLogger(__name__)

# a prefix at least this long is worth waiting for while another sequence reads it
FOLLOW_MIN_TOKENS = 32
# the rows classes of llama.cpp's CPU kernels (module docstring): generated tokens in calls
# of at most DECODE_ROWS rows, prompt tokens in calls of at least PREFILL_ROWS
DECODE_ROWS = 4
PREFILL_ROWS = 8
# an idle engine woken by a request waits this long for another of the same burst, at most
# GATHER_WINDOW times as long in all (``BatchEngine._take``)
GATHER_QUIET_S = 0.002
GATHER_WINDOW = 5
# a slot's cached prompt goes to the host cache when a new request would lose this many
SPILL_MIN_TOKENS = 8

Piece = tuple[str, str | None, tuple[int, int] | None]  # text, finish reason, usage


class EngineFault(Exception):
    """llama.cpp failed a decode; the sequences in that batch end with this error."""


class EngineTimeout(Exception):
    """No slot became free within the queue timeout."""


@dataclass
class EngineStats:
    """Counters of the engine for metrics (read without a lock: each is one int)."""

    active: int = 0
    waiting: int = 0
    steps: int = 0
    decodes: int = 0  # llama_decode calls (an invariant step may take several)
    last_batch_tokens: int = 0
    last_batch_seqs: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0
    padding_rows: int = 0  # rows that pad a prompt chunk to the others' length in its call
    host_cache_bytes: int = 0  # cells of prompts kept in host memory (:mod:`._host_cache`)
    host_cache_hits: int = 0  # prompts that started from an entry of the host cache
    # steps by the number of sequences they advanced (index: sequences)
    step_seqs: list[int] = field(default_factory=list)


class _Request(Claim):
    """One sequence: queued, then started in a slot (or cancelled first), then done."""

    def __init__(self, spec: SeqSpec, sampler: Callable[[], Any]) -> None:
        self.spec = spec
        self.make_sampler = sampler
        super().__init__()
        self.out: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        # engine thread only, from here
        self.slot = -1
        self.sampler: Any = None
        self.kv_tokens: list[int] = []  # tokens whose KV this slot holds
        self.pending: list[int] = []  # tokens still to decode: prompt left, or the last sampled
        self.prefilling = True
        self.generated: list[int] = []
        self.text = StopText(spec.stop)
        self.follow: tuple[_Request, int] | None = None
        # leading tokens whose KV was computed as prompt tokens are (what others may reuse)
        self.exact = 0
        self.decoded_from = len(spec.tokens) if spec.decoded_from is None else spec.decoded_from
        self.alive: Alive | None = None  # whether its client is still there

    def gone(self) -> bool:
        """Its client hung up (engine thread): cancelled, and its consumer told so."""
        if self.alive is None or self.alive():
            return False
        self.cancel()
        self.out.put(("error", ClientGone("the client hung up")))
        return True


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.out: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()


class BatchEngine:
    """The engine thread and its slots; :meth:`attach` gives it a model to batch on."""

    def __init__(self, name: str, n_slots: int, queue_timeout: float, chunk: int = 64,
                 n_batch: int = 512, invariant: bool = True, gather_quiet: float = GATHER_QUIET_S,
                 host_cache_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n_slots = n_slots
        self._host = HostCache(host_cache_bytes) if host_cache_bytes > 0 else None
        self.gather_quiet = gather_quiet
        self._clock = clock
        self.queue_timeout = queue_timeout
        self.chunk = max(chunk, PREFILL_ROWS)
        self.n_batch = n_batch
        self.invariant = invariant
        self.decode_rows = DECODE_ROWS
        self.prefill_rows = PREFILL_ROWS
        self.stats = EngineStats(step_seqs=[0] * (n_slots + 1))
        self._inbox: queue.SimpleQueue[_Request | _Job] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._slots: list[_Request | None] = [None] * n_slots
        self._cache: list[list[int]] = [[] for _ in range(n_slots)]
        self._exact: list[int] = [0] * n_slots  # per free slot: its request's ``exact``
        self._llm: Any = None
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._mem: Any = None
        self._n_swa = 0
        self._pad_below = 0
        self._fused = False
        self._replay_rows = 1
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- caller side ------------------------------------------------------------------------
    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine thread between two steps; its result or its exception."""
        job = _Job(fn)
        self._inbox.put(job)
        kind, value = job.out.get()
        if kind == "error":
            raise value
        return value

    def attach(self, llm: Any, n_ctx: int) -> None:
        """Make the batching context for ``llm``: ``n_ctx`` tokens for each slot."""
        self.call(lambda: self._attach(llm, n_ctx))

    def generate(self, spec: SeqSpec, sampler: Callable[[], Any]) -> Generator[Piece, None, None]:
        """The pieces of one sequence once it has a slot (:class:`EngineTimeout` if none frees
        within the queue timeout); closing the iterator early frees the slot."""
        req = _Request(spec, sampler)
        req.alive = client_alive.get()
        self._inbox.put(req)
        try:
            kind, value = req.out.get(timeout=self.queue_timeout)
        except queue.Empty:
            if req.cancel():
                raise EngineTimeout(f"no free slot for {self.queue_timeout:.0f} s") from None
            kind, value = req.out.get()
        if kind == "error":
            raise value
        return self._pieces(req)

    @staticmethod
    def _pieces(req: _Request) -> Generator[Piece, None, None]:
        # a consumer gone early frees the slot at the next step
        yield from drained(req.out, "piece", req.cancel)

    # --- engine thread ----------------------------------------------------------------------
    def _attach(self, llm: Any, n_ctx: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        if self.invariant and repacked(llm) and not rows_agree(llm):
            # the weights again, without the CPU's repacked layouts, whose kernels split the
            # rows classes once more on this build (module docstring); a model whose kernels
            # agree, or one loaded in :func:`plain_layouts`, is shared as it is
            log.info("%s: the repacked weights' kernels do not agree by rows; batching on "
                     "the plain layouts", self._thread.name)
            mparams = llama_cpp.llama_model_params.from_buffer_copy(llm.model_params)
            mparams.use_extra_bufts = False
            self._model = _internals.LlamaModel(path_model=llm.model_path, params=mparams,
                                                verbose=False)
        else:
            self._model = llm._model
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx * self.n_slots
        params.n_seq_max = self.n_slots
        # invariant: a KV stream per slot, so a sequence's attention never spans another's
        # cells (their place in a shared cache would change the order of its sums)
        params.kv_unified = not self.invariant
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._n_swa = int(llama_cpp.llama_model_n_swa(self._model.model))
        self._pad_below = min(n_ctx, self._n_swa) if self._n_swa > 0 else n_ctx
        # the fused attention kernel computes each row of a sequence on its own, so several
        # tokens of one sequence may share a call
        self._fused = params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._replay_rows = self.decode_rows if self._fused else 1
        self._llm = llm

    def _reusable(self, slot: int, n: int) -> int:
        """``n``, or 0 when the slot's sliding-window layers no longer hold what decoding past
        ``n`` tokens of it needs (their cells before the window are gone)."""
        import llama_cpp

        if n <= 0 or self._n_swa <= 0:
            return n
        pos_min = int(llama_cpp.llama_memory_seq_pos_min(self._mem, slot))
        return n if pos_min <= max(0, n - self._n_swa) else 0

    def _loop(self) -> None:
        while True:
            idle = not self._waiting and all(s is None for s in self._slots)
            self._take(block=idle)
            self._drop_cancelled()
            self._fill_slots()
            self.stats.active = sum(s is not None for s in self._slots)
            self.stats.waiting = len(self._waiting)
            if self.stats.active:
                self._step()
                self.stats.active = sum(s is not None for s in self._slots)

    def _take(self, block: bool) -> None:
        """What the inbox holds (waiting for it when ``block``: the engine is idle). An idle
        engine woken by a request also takes the rest of its burst (:func:`burst`), until
        the requests fill the slots: their prompts are then read in one call."""
        try:
            first = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        for item in burst(self._inbox, first, self.gather_quiet if block else 0.0,
                          GATHER_WINDOW * self.gather_quiet, self._clock,
                          lambda: not self._waiting or len(self._waiting) >= self.n_slots):
            if isinstance(item, _Job):
                try:
                    item.out.put(("done", item.fn()))
                except BaseException as exc:  # handed to the caller's thread
                    item.out.put(("error", exc))
            elif not item.cancelled:
                self._waiting.append(item)

    def _drop_cancelled(self) -> None:
        """Sequences cancelled, or whose client hung up, leave their slots."""
        for slot, req in enumerate(self._slots):
            if req is not None and (req.cancelled or req.gone()):
                self._leave(slot, req)

    def _leave(self, slot: int, req: _Request) -> None:
        self._slots[slot] = None
        self._cache[slot] = req.kv_tokens
        self._exact[slot] = req.exact if self.invariant else len(req.kv_tokens)
        for other in self._slots:  # those waiting on its prefix read it themselves
            if other is not None and other.follow is not None and other.follow[0] is req:
                other.follow = None
        req.out.put(("done", None))

    def _fill_slots(self) -> None:
        while self._waiting and None in self._slots:
            # it and those behind it take every free slot: any placement is as contiguous
            fills = len(self._waiting) >= self._slots.count(None)
            req = self._waiting.popleft()
            if req.gone() or not req.try_start():
                continue
            if self._llm is None:
                req.out.put(("error", EngineFault("model not loaded")))
                continue
            try:
                req.sampler = req.make_sampler()
            except Exception as exc:
                req.out.put(("error", exc))
                continue
            self._place(req, fills)
            req.out.put(("started", None))

    def _reuse(self, req: _Request, lcp: int, exact: int, slot: int) -> int:
        """How many leading tokens of ``req`` it may take from ``slot``, which holds ``lcp`` of
        them, the first ``exact`` computed as prompt tokens are (``slot`` -1: cells not in a
        slot yet, whose sliding window is checked once they are)."""
        n = min(lcp, len(req.spec.tokens) - 1)  # the last token is decoded for its logits
        if self.invariant:
            d = req.decoded_from
            n = min(n, exact, d)
            if n < d and d - n < self.prefill_rows:  # what is left is read in one class
                n = max(0, d - self.prefill_rows)
        return self._reusable(slot, n) if slot >= 0 else n

    def _place(self, req: _Request, fills: bool = False) -> None:
        """Put ``req`` in the free slot sharing the longest prefix with its prompt (invariant:
        the lowest free one, unless one saves a long prefix or ``fills``: those placed with it
        take every free slot), or copy in a longer prefix another slot or the host cache
        holds (the slot's own goes to the host cache), or wait for one a live seq reads."""
        import llama_cpp

        prompt = req.spec.tokens
        limit = len(prompt) - 1
        free = [i for i, s in enumerate(self._slots) if s is None]
        reuse = {i: self._reuse(req, common_prefix(self._cache[i], prompt), self._exact[i], i)
                 for i in free}
        if self.invariant and not fills:
            slot = max(free, key=lambda i: reuse[i] if reuse[i] >= FOLLOW_MIN_TOKENS else 0)
        else:
            slot = max(free, key=lambda i: reuse[i])
        n = reuse[slot]
        live = [r for r in self._slots if r is not None]
        # a longer prefix another slot holds (live, or free and passed over) is copied here
        sources = [(reuse[i], i) for i in free if i != slot]
        src = max(live, key=lambda r: common_prefix(r.kv_tokens, prompt), default=None)
        if src is not None:
            sources.append((self._reuse(req, common_prefix(src.kv_tokens, prompt), src.exact,
                                        src.slot), src.slot))
        src_n, src_slot = max(sources, default=(0, -1))
        self._spill(slot, n)
        held = self._host.best(prompt) if self._host is not None else None
        host_n = self._reuse(req, held[1], held[0].exact, -1) if held is not None else 0
        if held is not None and host_n > max(n, src_n):
            n = self._restore(slot, held[0], host_n)
        elif src_n > n:
            self._copy(src_slot, slot, src_n)
            n = src_n
        else:
            llama_cpp.llama_memory_seq_rm(self._mem, slot, n, -1)
        req.slot = slot
        req.kv_tokens = list(prompt[:n])
        req.pending = list(prompt[n:])
        req.exact = n
        self.stats.prompt_tokens_reused += n
        readers = [r for r in live if r.prefilling and r.follow is None]
        lead = max(readers, key=lambda r: common_prefix(r.spec.tokens, prompt), default=None)
        if lead is not None:
            lead_n = min(common_prefix(lead.spec.tokens, prompt), limit)
            if lead_n >= FOLLOW_MIN_TOKENS and lead_n > n:
                req.follow = (lead, lead_n)
        self._slots[slot] = req

    def _spill(self, slot: int, keep: int) -> None:
        """The reusable cached tokens of ``slot`` into the host cache, where the request
        taking the slot keeps only ``keep`` of them (the cells past them are cut first)."""
        import llama_cpp

        host, exact, ctx = self._host, self._exact[slot], self._ctx.ctx
        if host is None or exact - keep < SPILL_MIN_TOKENS:  # the common case: no copy
            return
        if host.holds(tokens := tuple(self._cache[slot][:exact])):
            return
        llama_cpp.llama_memory_seq_rm(self._mem, slot, exact, -1)
        size = int(llama_cpp.llama_state_seq_get_size(ctx, slot))
        buf = (ctypes.c_uint8 * size)()
        got = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, slot))
        if 0 < got <= size:
            host.put(HostEntry(tokens, exact, ctypes.string_at(buf, got)))
        self.stats.host_cache_bytes = host.bytes

    def _restore(self, slot: int, entry: HostEntry, n: int) -> int:
        """``entry``'s cells into ``slot``, cut to ``n`` tokens; how many it holds then."""
        import llama_cpp

        assert self._host is not None
        llama_cpp.llama_memory_seq_rm(self._mem, slot, 0, -1)
        buf = (ctypes.c_uint8 * len(entry.blob)).from_buffer_copy(entry.blob)
        if not llama_cpp.llama_state_seq_set_data(self._ctx.ctx, buf, len(entry.blob), slot):
            log.warning("llama.cpp refused a prompt of the host cache; reading it again")
            llama_cpp.llama_memory_seq_rm(self._mem, slot, 0, -1)
            return 0
        self._host.used(entry)
        self.stats.host_cache_hits = self._host.hits
        n = self._reusable(slot, n)
        llama_cpp.llama_memory_seq_rm(self._mem, slot, n, -1)
        return n

    def _copy(self, src: int, dst: int, n: int) -> None:
        """The first ``n`` tokens of slot ``src`` into slot ``dst`` (separate streams are
        copied whole by llama.cpp, so the copy is cut back to ``n`` after)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._mem, dst, 0, -1)
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, 0, -1)
        llama_cpp.llama_memory_seq_rm(self._mem, dst, n, -1)

    def _resolve_follows(self) -> None:
        for req in self._slots:
            if req is None or req.follow is None:
                continue
            lead, n = req.follow
            if len(lead.kv_tokens) < n:
                continue
            req.follow = None
            n = self._reuse(req, n, lead.exact, lead.slot)
            if n <= len(req.kv_tokens):
                continue
            self._copy(lead.slot, req.slot, n)
            self.stats.prompt_tokens_reused += n - len(req.kv_tokens)
            req.kv_tokens = list(req.spec.tokens[:n])
            req.pending = list(req.spec.tokens[n:])
            req.exact = n

    def _plan(self) -> list[list[Entry[_Request]]]:
        """This step's decodes (:func:`knative.serving._steps.plan`)."""
        live = [r for r in self._slots if r is not None]
        return plan(live, Limits(
            invariant=self.invariant, decode_rows=self.decode_rows,
            prefill_rows=self.prefill_rows, replay_rows=self._replay_rows, chunk=self.chunk,
            n_batch=self.n_batch, pad_below=self._pad_below))

    def _step(self) -> None:
        self._resolve_follows()
        stats = self.stats
        stats.last_batch_tokens = stats.last_batch_seqs = 0
        calls = self._plan()
        if calls:
            stats.steps += 1
            stats.step_seqs[min(sum(map(len, calls)), self.n_slots)] += 1
        for n, call in enumerate(calls):
            if n:  # a client that hung up during the call before is not decoded for
                self._drop_cancelled()
                call = [e for e in call if self._slots[e[0].slot] is e[0]]
            if call and not self._decode(call):
                return

    def _decode(self, call: list[Entry[_Request]]) -> bool:
        import llama_cpp

        b = self._batch
        i = 0
        for req, take, want, pad in call:
            pos = len(req.kv_tokens)
            for k in range(take + pad):  # padding: the last token again, no logits
                b.token[i] = req.pending[min(k, take - 1)]
                b.pos[i] = pos + k
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = req.slot
                b.logits[i] = want and k == take - 1
                i += 1
        b.n_tokens = i
        self.stats.decodes += 1
        self.stats.last_batch_tokens += i
        self.stats.last_batch_seqs += len(call)
        rc = int(llama_cpp.llama_decode(self._ctx.ctx, b))
        if rc != 0:
            self._fail(call, EngineFault(f"llama_decode returned {rc}"))
            return False
        i = 0
        for req, take, want, pad in call:
            pos = len(req.kv_tokens)
            if pad:
                llama_cpp.llama_memory_seq_rm(self._mem, req.slot, pos + take, -1)
                self.stats.padding_rows += pad
            req.kv_tokens.extend(req.pending[:take])
            if req.prefilling:
                self.stats.prompt_tokens_computed += take
                if req.exact == pos and pos < req.decoded_from and take >= self.prefill_rows:
                    req.exact = min(len(req.kv_tokens), req.decoded_from)
            del req.pending[:take]
            if want:
                self._advance(req, int(req.sampler.sample(self._ctx, i + take - 1)))
            i += take + pad
        return True

    def _fail(self, call: list[Entry[_Request]], exc: Exception) -> None:
        import llama_cpp

        log.error("%s", exc)
        for req, *_ in call:
            llama_cpp.llama_memory_seq_rm(self._mem, req.slot, 0, -1)
            req.kv_tokens = []
            req.exact = 0
            req.out.put(("error", exc))
            self._leave(req.slot, req)

    def _advance(self, req: _Request, token: int) -> None:
        """Take the sampled ``token`` as create_completion does: end of generation, stop
        sequences on the bytes, then the length limit."""
        import llama_cpp

        llm = self._llm
        req.prefilling = False
        spec = req.spec
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            data = llm.detokenize(req.generated, prev_tokens=list(spec.tokens))
            self._finish(req, req.text.finish(data), "stop")
            return
        req.generated.append(token)
        data = llm.detokenize(req.generated, prev_tokens=list(spec.tokens))
        text, stopped = req.text.update(data)
        if stopped:
            self._finish(req, text, "stop")
        elif len(req.generated) >= spec.max_tokens:
            self._finish(req, text + req.text.finish(data), "length")
        else:
            if text:
                req.out.put(("piece", (text, None, None)))
            req.pending = [token]

    def _finish(self, req: _Request, text: str, reason: str) -> None:
        usage = (len(req.spec.tokens), len(req.generated))
        req.out.put(("piece", (text, reason, usage)))
        self._leave(req.slot, req)

    # --- state --------------------------------------------------------------------------------
    def save_state(self) -> dict[str, bytes]:
        """The whole KV state of the batching context and the tokens each slot holds.

        One snapshot of the whole context rather than one per sequence: it is taken between
        two steps, so every slot is at one consistent point, and cells that sequences share
        (a common system prompt) are stored once instead of once per sequence.
        """

        def grab() -> dict[str, bytes]:
            import llama_cpp

            ctx = self._ctx.ctx
            size = int(llama_cpp.llama_state_get_size(ctx))
            buf = (ctypes.c_uint8 * size)()
            n_bytes = int(llama_cpp.llama_state_get_data(ctx, buf, size))
            if n_bytes > size:
                raise EngineFault("llama.cpp returned more state than it announced")
            held = [r.kv_tokens if r is not None else self._cache[i]
                    for i, r in enumerate(self._slots)]
            exact = [r.exact if r is not None else self._exact[i]
                     for i, r in enumerate(self._slots)]
            return {
                "llama_state": ctypes.string_at(buf, n_bytes),
                "input_ids": b"",
                "last_logits": b"",
                "slot_tokens": json.dumps(held).encode(),
                "slot_exact": json.dumps(exact).encode(),
            }

        blobs: dict[str, bytes] = self.call(grab)
        return blobs

    def load_state(self, raw: bytes, slot_tokens: list[list[int]],
                   slot_exact: list[int] | None = None) -> None:
        """Put back a state of :meth:`save_state` while no sequence is live: the slots then
        hold their prefixes again, for the next requests to reuse."""

        def put_back() -> None:
            import llama_cpp

            if len(slot_tokens) != self.n_slots or any(r is not None for r in self._slots):
                raise EngineFault("engine state does not match the slots")
            buf = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
            if llama_cpp.llama_state_set_data(self._ctx.ctx, buf, len(raw)) != len(raw):
                raise EngineFault("llama.cpp refused the engine state")
            self._cache = [list(map(int, t)) for t in slot_tokens]
            # a snapshot of an older engine says nothing of how its prefixes were computed
            self._exact = ([min(int(e), len(t)) for e, t in zip(slot_exact, self._cache,
                                                                  strict=True)]
                           if slot_exact is not None and len(slot_exact) == self.n_slots
                           else [0] * self.n_slots)

        self.call(put_back)

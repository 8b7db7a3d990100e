"""What one step of the batching engine decodes: its calls, and the rows of each sequence in
them.

A pure function of the live sequences and the engine's limits, apart from the engine thread,
so the row classes of batch invariance (:mod:`knative.serving._engine`) are planned, and
tested, without a model.

Prompt chunks of several sequences share a call in invariant mode only at one length each.
With a KV stream per slot, llama.cpp splits a call into sub-batches that hold the same number
of tokens of each sequence: two chunks of 9 and 12 tokens would run as 9 + 9 rows, then 3 rows
of the longer alone, in the 1-to-4 class of a decode. A shorter chunk is padded up instead: the
sequence's last token again at the next positions, with no logits; causal attention keeps the
real rows' results, and the engine removes the padding cells after the call. Measured: four
chunks of 8 to 11 tokens, read in one padded call, gave every row's logits bit for bit as read
alone, in 113 ms against 164 ms for four calls (2 threads, Gemma 3 270M Q4_K_M).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Seq(Protocol):
    """What planning reads of a live sequence."""

    @property
    def slot(self) -> int: ...
    @property
    def kv_tokens(self) -> list[int]: ...  # tokens whose KV its slot holds
    @property
    def pending(self) -> list[int]: ...  # prompt left to read, or the last sampled token
    @property
    def prefilling(self) -> bool: ...
    @property
    def follow(self) -> object: ...  # not None while it waits for a prefix another reads
    @property
    def decoded_from(self) -> int: ...  # where the tokens an earlier run generated begin


S = TypeVar("S", bound=Seq)


@dataclass(frozen=True)
class Limits:
    """The engine's bounds on a step.

    ``pad_below``: padding rows must stay at positions below it (the slot's context, and a
    sliding window's size: a padding cell past it could push out of the window a cell the
    sequence's next real token still sees).
    """

    invariant: bool
    decode_rows: int
    prefill_rows: int
    replay_rows: int
    chunk: int
    n_batch: int
    pad_below: int


# (sequence, tokens it decodes, whether its logits are needed, padding rows after them)
Entry = tuple[S, int, bool, int]


def plan(live: Sequence[S], lim: Limits) -> list[list[Entry[S]]]:
    """This step's decodes: one for all, or (invariant) the prompt chunks first, those of one
    length each in a call, then the generated tokens in calls of at most ``decode_rows``."""
    rows = lim.decode_rows if lim.invariant else lim.n_batch
    calls: list[list[Entry[S]]] = []
    used = rows

    def put(entry: Entry[S]) -> None:
        nonlocal used
        if used + entry[1] > rows:
            calls.append([])
            used = 0
        calls[-1].append(entry)
        used += entry[1]

    for r in live:
        if not r.prefilling:
            put((r, 1, True, 0))
    # invariant: what an earlier run generated is decoded again as generated tokens are (up
    # to ``replay_rows`` of them in one call, which the fused attention allows)
    replaying = {r.slot for r in live if lim.invariant and r.prefilling
                 and r.follow is None and len(r.kv_tokens) >= r.decoded_from}
    for r in live:
        if r.slot in replaying:
            take = min(lim.replay_rows, len(r.pending), rows - used if used < rows else rows)
            put((r, take, take == len(r.pending), 0))
    reading: list[Entry[S]] = []
    budget = lim.n_batch - (0 if lim.invariant else used if calls else 0) - lim.prefill_rows
    cap = lim.chunk if calls else budget
    for r in live:
        if not r.prefilling or r.follow is not None or r.slot in replaying:
            continue
        take = chunk(r, min(cap, budget), lim)
        if take <= 0:
            break
        reading.append((r, take, take == len(r.pending), 0))
        cap -= take
        budget -= take
    if not lim.invariant:
        return [calls[0] + reading] if calls else [reading] if reading else []
    return merged(reading, lim) + calls  # a new prompt's first token sooner


def chunk(req: Seq, cap: int, lim: Limits) -> int:
    """Tokens of ``req``'s prompt to read in this step, at most ``cap`` (invariant: never
    leaving a call of fewer than ``prefill_rows`` rows for later)."""
    n = min(len(req.pending), cap)
    if not lim.invariant:
        return n
    left = req.decoded_from - len(req.kv_tokens)
    if n < min(left, lim.prefill_rows):
        return 0
    return left if left - n < lim.prefill_rows else n


def merged(reading: list[Entry[S]], lim: Limits) -> list[list[Entry[S]]]:
    """The prompt chunks in calls: the longest with those within ``prefill_rows`` tokens of
    it, each padded to its length (module docstring), in slot order (llama.cpp makes one
    sub-batch of sequences whose slots follow each other). A chunk under ``prefill_rows``
    keeps a call of its own: padded, it would leave its class."""
    rest = sorted(reading, key=lambda e: -e[1])
    calls: list[list[Entry[S]]] = []
    while rest:
        head = rest.pop(0)
        length = head[1]
        group = [head]
        if length >= lim.prefill_rows:
            for e in list(rest):
                r, take = e[0], e[1]
                if (take >= lim.prefill_rows and length - take <= lim.prefill_rows
                        and len(r.kv_tokens) + length <= lim.pad_below
                        and length * (len(group) + 1) <= lim.n_batch):
                    group.append(e)
                    rest.remove(e)
        calls.append(sorted(((r, take, want, length - take) for r, take, want, _ in group),
                            key=lambda e: e[0].slot))
    return calls

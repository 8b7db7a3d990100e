"""Prompts whose KV the batching engine no longer holds in a slot, kept in host memory.

A slot keeps the tokens of its last request for the next one to reuse, but there are only as
many slots as sequences decode together: a ninth distinct system prompt, or a chat that comes
back after four others, finds its prefix gone and is read again. Before a slot's cached tokens
are cut for a new request, the engine copies that sequence's KV out of llama.cpp
(``llama_state_seq_get_data``) into this cache; a prompt that shares a longer prefix with an
entry than with any slot has the entry's cells put back into its slot
(``llama_state_seq_set_data``) and starts past that prefix, as llama.cpp's server does with
its host-memory prompt cache (``--cache-ram``). The cells come back bit for bit, so a prefix
computed as a prompt is read (``exact``) stays reusable under batch invariance.

Least recently used entries go first once the entries' bytes pass the bound; an entry whose
tokens begin another's is dropped for the longer one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from knative.serving._sampling import common_prefix


@dataclass(frozen=True)
class Entry:
    """One sequence's cells: the tokens they hold, how many of them were computed as a
    prompt is read, and llama.cpp's bytes for them."""

    tokens: tuple[int, ...]
    exact: int
    blob: bytes


class HostCache:
    """Entries up to ``limit_bytes`` of cells in all, least recently used out first."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, tokens: tuple[int, ...]) -> bool:
        """Whether an entry's tokens begin with ``tokens`` (nothing to add for them)."""
        return any(key[:len(tokens)] == tokens for key in self._entries)

    def best(self, prompt: tuple[int, ...] | list[int]) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with ``prompt``, and that prefix's length."""
        found: tuple[Entry, int] | None = None
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt)
            if n > 0 and (found is None or n > found[1]):
                found = (entry, n)
        return found

    def used(self, entry: Entry) -> None:
        """``entry`` was put back into a slot: the most recently used now."""
        if entry.tokens in self._entries:
            self._entries.move_to_end(entry.tokens)
            self.hits += 1

    def put(self, entry: Entry) -> bool:
        """Keep ``entry`` (False where it alone passes the bound, or another holds it)."""
        if len(entry.blob) > self.limit_bytes or self.holds(entry.tokens):
            return False
        for key in [k for k in self._entries if entry.tokens[:len(k)] == k]:
            self._drop(key)
        self._entries[entry.tokens] = entry
        self.bytes += len(entry.blob)
        while self.bytes > self.limit_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= len(self._entries.pop(key).blob)

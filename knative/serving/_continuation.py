"""Generations that can be continued on another replica: token ids in, token ids out.

A stream the gateway may resume elsewhere is rebuilt here from the token ids the engine
samples, not from the engine's text: the text sent so far is always the text of a prefix of
those ids, so another replica given the prompt plus those ids (and how many characters of
their text the client already has) sends exactly the rest. Stop sequences are matched on the
bytes of every completion token, the resumed ones included, so a stop that spans the break
still stops; a multi-byte character split between two tokens (or across the break) is held
back until it is whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from knative.serving._backends import Delta
from knative.serving._sampling import utf8_complete

T = TypeVar("T")

Detokenize = Callable[[list[int], list[int]], bytes]  # (tokens, previous tokens) -> bytes


class Continuation:
    """The text of one generation, grown token by token from ``resumed`` on.

    ``sent_chars`` characters of the resumed tokens' text already went to the client.
    :meth:`feed` takes newly sampled ids and returns the new text that can no longer turn
    into a stop sequence or a split character, with the finish reason once it ends.
    """

    def __init__(self, detokenize: Detokenize, is_eog: Callable[[int], bool],
                 prompt: list[int], stop: tuple[str, ...], max_tokens: int,
                 resumed: tuple[int, ...] = (), sent_chars: int = 0) -> None:
        self._detok = detokenize
        self._is_eog = is_eog
        self.prompt = prompt
        self.stops = [s.encode("utf-8") for s in stop if s]
        self.max_tokens = max_tokens
        self.generated: list[int] = []
        self.finish: str | None = None
        self._data = b""
        self.sent = ""
        self.feed(list(resumed))
        # what the client already has is not sent again; the rest of it (held back, or cut
        # by the break) comes out of :meth:`start`
        self.sent = self.sent[:sent_chars]

    def start(self) -> str:
        """The text of the resumed tokens the client does not have yet."""
        return self._text()

    @property
    def remaining(self) -> int:
        return max(0, self.max_tokens - len(self.generated))

    def feed(self, ids: list[int]) -> str:
        """New safe text for ``ids`` (sampled after those fed before)."""
        if self.finish is not None:
            return ""
        for t in ids:
            if self._is_eog(t):
                self.finish = "stop"
                break
            self.generated.append(t)
            if len(self.generated) >= self.max_tokens:
                self.finish = "length"
                break
        if ids:
            self._data = self._detok(self.generated, self.prompt)
        return self._text()

    def _text(self) -> str:
        data = self._data
        hit = next((s for s in self.stops if s in data), None)
        if hit is not None:
            self.finish = "stop"
            return self._send(data[:data.index(hit)])
        if self.finish is not None:
            return self._send(data)
        end = utf8_complete(data)
        hold = 0
        for s in self.stops:
            for i in range(min(len(s), end), 0, -1):
                if data[:end].endswith(s[:i]):
                    hold = max(hold, i)
                    break
        return self._send(data[:end - hold])

    def _send(self, data: bytes) -> str:
        text = data.decode("utf-8", errors="ignore")
        new = text[len(self.sent):] if text.startswith(self.sent) else ""
        if len(text) > len(self.sent):
            self.sent = text
        return new


class Recorder:
    """A sampler chain that also keeps every token it samples, in order (read from another
    thread: appends to a list are atomic)."""

    def __init__(self, inner: Any, out: list[int]) -> None:
        self._inner = inner
        self._out = out

    def sample(self, ctx: Any, idx: int) -> int:
        token = int(self._inner.sample(ctx, idx))
        self._out.append(token)
        return token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def recorded(signals: Iterator[Any], ids: list[T]) -> Iterator[list[T]]:
    """What a recorder kept in ``ids`` (a :class:`Recorder`'s token ids, a logprob sampler's
    tokens), in runs, as each of the engine's ``signals`` (its pieces of text) arrives;
    closing this closes ``signals``."""
    seen = 0
    try:
        for _ in signals:
            n = len(ids)
            if n > seen:
                yield ids[seen:n]
                seen = n
        if len(ids) > seen:
            yield ids[seen:]
    finally:
        close = getattr(signals, "close", None)
        if close is not None:
            close()


def continuation(llm: Any, prompt: tuple[int, ...], stop: tuple[str, ...], max_tokens: int,
                 resumed: tuple[int, ...], sent_chars: int) -> Continuation:
    """A :class:`Continuation` over a llama-cpp-python ``Llama``'s vocabulary."""
    import llama_cpp

    vocab = llm._model.vocab

    def detokenize(ids: list[int], prev: list[int]) -> bytes:
        return bytes(llm.detokenize(ids, prev_tokens=prev))

    def is_eog(token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    return Continuation(detokenize, is_eog, list(prompt), stop, max_tokens, resumed, sent_chars)


def deltas(cont: Continuation, runs: Iterator[list[int]]) -> Iterator[Delta]:
    """The deltas of ``cont`` as the engine's ``runs`` of sampled ids arrive, each with the
    ids it adds; the last has the finish reason and the usage (resumed tokens counted)."""
    reported = len(cont.generated)
    text = cont.start()
    try:
        for run in runs:
            if cont.finish is not None:
                break
            text += cont.feed(run)
            if text and cont.finish is None:
                yield Delta(text, tokens=tuple(cont.generated[reported:]))
                reported, text = len(cont.generated), ""
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()
    if cont.finish is None:  # the engine ended first (its length limit, or its own stop)
        cont.finish = "length" if cont.remaining == 0 else "stop"
        text += cont.start()
    yield Delta(text, cont.finish, (len(cont.prompt), len(cont.generated)),
                tuple(cont.generated[reported:]))

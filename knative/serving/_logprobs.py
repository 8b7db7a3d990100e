"""Log probabilities in OpenAI's two shapes: completions' parallel lists (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``) and chat's ``content`` entries (``token``,
``logprob``, ``bytes``, ``top_logprobs``), for a whole answer or the part one chunk adds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


class CompletionLogprobs:
    """The ``logprobs`` of one completion choice, piece by piece; offsets count characters
    from the start of the prompt (the echoed prompt's tokens come first when echoed)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def of(self, entries: Sequence[Any]) -> dict[str, Any]:
        tokens, lps, tops, offsets = [], [], [], []
        for e in entries:
            text = _text(e.piece)
            tokens.append(text)
            lps.append(e.logprob)
            top: dict[str, float] = {}
            for piece, lp in e.top:
                top.setdefault(_text(piece), lp)
            tops.append(top)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                "text_offset": offsets}

    @staticmethod
    def join(parts: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                               "text_offset": []}
        for p in parts:
            for k in out:
                out[k].extend(p[k])
        return out


def chat_entries(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """``choices[].logprobs.content`` items of these tokens."""
    return [{"token": _text(e.piece), "logprob": e.logprob, "bytes": list(e.piece),
             "top_logprobs": [{"token": _text(p), "logprob": lp, "bytes": list(p)}
                              for p, lp in e.top]}
            for e in entries]


def chat_logprobs(entries: Sequence[Any]) -> dict[str, Any]:
    return {"content": chat_entries(entries), "refusal": None}

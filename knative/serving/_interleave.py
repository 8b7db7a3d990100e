"""The choices of one streamed request generated side by side, their deltas merged as they
come, so a client sees every choice grow at once (as OpenAI streams ``n`` choices).

Only an engine that decodes several sequences together (the batching engine) makes this
worth a thread per choice; on the single-sequence engine the choices run one after another.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

from knative.serving._backends import Delta


def merged(run: Callable[[Any], Iterator[Delta]], inputs: tuple[Any, ...],
           first_iter: Iterator[Delta], first: Delta | None
           ) -> Generator[tuple[int, Delta | None], None, None]:
    """``(choice, delta)`` of every input's deltas in the order they come, ``(choice, None)``
    when a choice ends; the first input's first delta is ``first``, the rest ``first_iter``.
    Closing this stops every choice at its next delta."""
    out: queue.SimpleQueue[tuple[int, Delta | BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def pump(i: int) -> None:
        it: Iterator[Delta] | None = None
        try:
            if i == 0:
                it = first_iter
                if first is not None:
                    out.put((0, first))
            else:
                it = run(inputs[i])
            for d in it:
                if stop.is_set():
                    break
                out.put((i, d))
            out.put((i, None))
        except BaseException as exc:  # handed to the stream's thread
            out.put((i, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    for i in range(len(inputs)):
        threading.Thread(target=pump, args=(i,), name=f"choice-{i}", daemon=True).start()
    live = len(inputs)
    try:
        while live:
            i, item = out.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                live -= 1
            yield i, item
    finally:
        stop.set()

"""A replica app on a real HTTP port in a thread (the real models behind it), for the openai
client and the conformance tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server

from knative.serving import ServeSettings, create_app


@contextmanager
def serve_replica(settings: ServeSettings, generation: Any, embedding: Any) -> Iterator[str]:
    app = create_app(settings, generation, embedding)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def sse_chunks(text: str) -> tuple[list[dict[str, Any]], bool]:
    """The JSON events of an event stream, and whether it ended with ``[DONE]``."""
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    done = bool(events) and events[-1] == "[DONE]"
    return [json.loads(e) for e in events if e != "[DONE]"], done

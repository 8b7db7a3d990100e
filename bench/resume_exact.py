"""How exact a resumed stream is: the same generation continued on another replica process from
the prompt plus the tokens so far, against the uninterrupted one (issue "Streams survive abrupt
faults": identical streams out of 100 resumed greedy streams, target >= 99).

Method: two `surefoot serve` processes (one thread each, the engine of the environment:
``SUREFOOT_SLOTS``), asked with the internal token for their resumable stream (each event
carries the token ids it adds and the characters sent so far). For each of N prompts (chats and
completions, greedy; with ``--seeded`` a share of them sampled at temperature 0.9 with a seed)
replica A gives the uninterrupted stream; a break point is drawn among its events; replica B
continues from the token ids before it. A resume is identical when the text sent before the
break plus B's text is A's text, B's finish reason is A's, and the usage counts match. The
baseline in the same run is the reference itself asked again of replica B from the start (a
resume from zero tokens): what "identical" can reach at all between two processes.

    .venv/bin/python bench/resume_exact.py --n 100
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.knative.test_resume_gateway import TOKEN, Replica

FIELD = ',"surefoot_resume":'
TOPICS = ["the sea", "a lighthouse", "winter", "a city at night", "bread", "a cat", "rain",
          "mountains", "a library", "the moon", "trains", "a garden", "coffee", "a storm",
          "an old map", "bees", "the desert", "a violin", "autumn leaves", "a river"]
FORMS = ["Write a short poem about {}.", "Describe {} in three sentences.",
         "List five facts about {}.", "Tell a tiny story about {}.", "Explain {} to a child."]


def bodies(n: int, seeded: float, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        topic, form = TOPICS[i % len(TOPICS)], FORMS[(i // len(TOPICS)) % len(FORMS)]
        sampled = rng.random() < seeded
        params = {"max_tokens": 48, "temperature": 0.9 if sampled else 0.0, "stream": True,
                  "stream_options": {"include_usage": True}, **({"seed": i} if sampled else {})}
        if i % 4 == 3:
            out.append(("/v1/completions", {"prompt": form.format(topic) + "\n", **params}))
        else:
            out.append(("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": form.format(topic)}],
                         **params}))
    return out


def events(client: httpx.Client, url: str, path: str,
           body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    r = client.post(f"{url}{path}", json=body, headers={"X-Surefoot-Internal": TOKEN},
                    timeout=180)
    r.raise_for_status()
    chunks, fields = [], []
    for ev in r.text.split("\n\n"):
        if not ev.startswith("data: ") or ev == "data: [DONE]":
            continue
        data = ev[len("data: "):]
        i = data.rfind(FIELD)
        chunks.append(json.loads(data[:i] + "}" if i >= 0 else data))
        fields.append(json.loads(data[i + len(FIELD):-1]) if i >= 0 else {"t": [], "c": 0})
    return chunks, fields


def text(chunks: list[dict[str, Any]]) -> str:
    return "".join((ch.get("text") or (ch.get("delta") or {}).get("content") or "")
                   for c in chunks for ch in c.get("choices", []))


def finish(chunks: list[dict[str, Any]]) -> str | None:
    return next((ch["finish_reason"] for c in reversed(chunks) for ch in c.get("choices", [])
                 if ch.get("finish_reason")), None)


def resume(client: httpx.Client, url: str, path: str, body: dict[str, Any],
           chunks: list[dict[str, Any]], fields: list[dict[str, Any]], cut: int) -> bool:
    ids = [t for f in fields[:cut] for t in f["t"]]
    sent = text(chunks[:cut])
    field = {"tokens": ids, "chars": fields[cut - 1]["c"] if cut else 0,
             "id": chunks[0]["id"], "created": chunks[0]["created"]}
    rest, _ = events(client, url, path, {**body, "surefoot_resume": field})
    return (sent + text(rest) == text(chunks) and finish(rest) == finish(chunks)
            and rest[-1].get("usage") == chunks[-1].get("usage"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="resumed streams")
    ap.add_argument("--seeded", type=float, default=0.0,
                    help="share of the streams sampled with a seed (the rest greedy)")
    args = ap.parse_args()
    rng = random.Random(7)
    reps = [Replica("a"), Replica("b")]
    try:
        deadline = time.monotonic() + 180
        for r in reps:
            r.wait_ready(deadline)
        same = base = 0
        kinds: dict[str, list[int]] = {"greedy": [0, 0], "seeded": [0, 0]}
        misses = []
        t0 = time.monotonic()
        with httpx.Client() as client:
            for k, (path, body) in enumerate(bodies(args.n, args.seeded, rng)):
                chunks, fields = events(client, reps[0].url, path, body)
                content = [i for i, c in enumerate(chunks, 1)
                           if any(ch.get("text") or (ch.get("delta") or {}).get("content")
                                  for ch in c.get("choices", []))]
                cut = rng.choice(content[:-1] or content)  # after this event, not the last
                ok = resume(client, reps[1].url, path, body, chunks, fields, cut)
                ok0 = resume(client, reps[1].url, path, body, chunks, fields, 0)
                same += ok
                base += ok0
                kind = "seeded" if "seed" in body else "greedy"
                kinds[kind][0] += ok
                kinds[kind][1] += 1
                if not ok:
                    misses.append((k, path, cut, len(content)))
        took = time.monotonic() - t0
    finally:
        for r in reps:
            r.stop()
    print(f"resumed on another process: {same}/{args.n} identical "
          f"(greedy {kinds['greedy'][0]}/{kinds['greedy'][1]}, "
          f"seeded {kinds['seeded'][0]}/{kinds['seeded'][1]}); baseline (asked again from "
          f"the start on the other process) {base}/{args.n}; ratio {same / max(base, 1):.2f}; "
          f"{took:.0f} s")
    for m in misses:
        print(f"  not identical: #{m[0]} {m[1]} cut after event {m[2]} of {m[3]}")


if __name__ == "__main__":
    main()

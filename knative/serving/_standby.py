"""A standby replica: started and loaded ahead of need, serving nothing until it takes over.

Starting a replica costs seconds (Python, imports, loading the models); losing one should not.
A standby is a replica process that has loaded its models but answers ``/readyz`` with 503
(reason ``standby``) and takes no work. When a replica of its revision is lost, the platform
hands the standby the lost replica's identity through ``POST /admin/adopt`` (the replica name
and node): the standby restores its revision's latest checkpoint (the engine's KV state, so the
prompts cached before are cached again), starts what a replica runs for its node (the breaker
watch, the checkpoint timer) and is ready at once. The route is protected by the internal token
the platform and the gateway share with the replicas (``X-Surefoot-Internal``).

A process's first generation costs about a second more than the next ones (llama.cpp's first
decode: buffers, threads, the weights paged in): a standby pays it before it says it is loaded
(:func:`warm_up`), so that the first request after a takeover costs what a request costs.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, jsonify, request

from knative.serving._openai import SamplingParams
from knative.serving._runtime import Runtime

log = logging.getLogger(__name__)

INTERNAL_HEADER = "X-Surefoot-Internal"

AdoptHook = Callable[[], dict[str, Any]]


class AdoptError(Exception):
    """The adoption cannot happen (HTTP status and a message naming the field)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Standby:
    """The adoption of a lost replica's identity by this standby (once)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.hooks: list[AdoptHook] = []  # run in order at adoption; each returns facts
        self._lock = threading.Lock()

    def adopt(self, replica: str, node: str) -> dict[str, Any]:
        """Take the identity ``replica`` on ``node``; the facts of the takeover."""
        with self._lock:
            if not self.rt.standby:
                raise AdoptError(409, f"not a standby: this replica is {self.rt.settings.replica}")
            if self.rt.not_ready_reason() != "standby":
                raise AdoptError(409, f"cannot take over yet: {self.rt.not_ready_reason()}")
            start = time.perf_counter()
            self.rt.settings = replace(self.rt.settings, replica=replica, node=node)
            facts: dict[str, Any] = {"replica": replica, "node": node}
            for hook in self.hooks:
                try:
                    facts.update(hook())
                except Exception:  # serving without warm state beats not serving
                    log.exception("adoption step failed; serving without it")
            self.rt.adopted()
            facts["seconds"] = round(time.perf_counter() - start, 4)
            facts["models_ready"] = self.rt.models_readiness()
            log.info("standby took over as %s on %s in %.3f s", replica, node,
                     facts["seconds"])
            return facts

    # --- HTTP -------------------------------------------------------------------------------
    def blueprint(self) -> Blueprint:
        bp = Blueprint("standby", __name__)
        bp.add_url_rule("/admin/adopt", view_func=self.admin_adopt, methods=["POST"])
        return bp

    def admin_adopt(self) -> tuple[Response, int]:
        """``POST /admin/adopt`` ``{"replica": NAME, "node": NODE}`` with the internal token."""
        try:
            self._authorize(request.headers.get(INTERNAL_HEADER, ""))
            replica, node = _identity(request.get_json(silent=True))
            return jsonify(self.adopt(replica, node)), 200
        except AdoptError as exc:
            return jsonify({"error": str(exc)}), exc.status

    def _authorize(self, given: str) -> None:
        token = self.rt.settings.internal_token
        if not token:
            raise AdoptError(403, f"{INTERNAL_HEADER}: this replica has no internal token")
        if not given:
            raise AdoptError(401, f"{INTERNAL_HEADER}: header required")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise AdoptError(403, f"{INTERNAL_HEADER}: wrong token")


WARM_UP_PROMPT = "A standby warms up its engine with one short generation. " * 6


def warm_up(runtime: Runtime) -> None:
    """Short generations on the LLM (whole and streamed), before the standby reports it
    loaded."""
    gen = runtime.generation
    if gen is None:
        return
    start = time.perf_counter()
    params = SamplingParams(max_tokens=2, temperature=0.0, top_p=1.0)
    try:
        gen.complete(WARM_UP_PROMPT, params)
        for _ in gen.stream_complete(WARM_UP_PROMPT + "Again:", params):
            pass
    except Exception:  # a standby that cannot warm up still takes over
        log.exception("warm-up generation failed")
        return
    runtime.phases["warmed_up"] = time.time()
    log.info("engine warmed up in %.2f s", time.perf_counter() - start)


def _identity(body: object) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise AdoptError(400, "body: must be a JSON object with replica and node")
    problems = [f"{k}: must be a non-empty string" for k in ("replica", "node")
                if not isinstance(body.get(k), str) or not body.get(k)]
    if problems:
        raise AdoptError(400, "; ".join(problems))
    return str(body["replica"]), str(body["node"])

"""The OpenAI routes of a replica: models, completions, chat completions, embeddings.

Each request is validated first (every bad field named at once), then admitted (or refused
with a retryable 503), then run on the one engine; the ticket is released when the answer, or
the stream, ends.

A streamed completion or chat that carries the replica's internal token
(:data:`INTERNAL_HEADER`, from the gateway) is resumable: its events report their token ids,
and it may continue, from the gateway's ``surefoot_resume`` field, a stream another replica
began. Clients without the token get a 400 naming that field. Every other request runs as
its choices (``n`` of each prompt) on the plain text path, or, when it asks for logprobs,
structured output or tools, token by token (:mod:`knative.serving._choices`).
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from knative.serving import _openai as oa
from knative.serving._admission import Ticket
from knative.serving._backends import Delta
from knative.serving._choices import Choices
from knative.serving._errors import UnsupportedType
from knative.serving._runtime import Runtime
from knative.serving._stream import (
    CHAT,
    COMPLETION,
    Shape,
    StreamKind,
    stream_response,
    usage,
)

INTERNAL_HEADER = "X-Surefoot-Internal"


def body_json() -> Any:
    """The request's JSON body; 415 for another type, 400 for JSON that does not parse."""
    if request.mimetype != "application/json":
        raise UnsupportedType(request.mimetype or "none")
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise oa.RequestInvalid([oa.FieldError("body", f"invalid JSON: {exc}")]) from exc


def _encode(vector: list[float], encoding_format: str) -> Any:
    if encoding_format != "base64":
        return vector
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


class OpenAIRoutes:
    """The ``/v1`` routes over one replica :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.limits = oa.Limits(max_tokens=runtime.settings.max_tokens,
                                max_n=runtime.settings.max_n)
        self._internal = runtime.settings.internal_token.encode()

    def internal(self) -> bool:
        """Whether this request carries the internal token the gateway shares."""
        got = request.headers.get(INTERNAL_HEADER)
        return bool(self._internal) and got is not None and hmac.compare_digest(
            got.encode(), self._internal)

    def blueprint(self) -> Blueprint:
        bp = Blueprint("openai", __name__)
        bp.add_url_rule("/v1/models", view_func=self.models, methods=["GET"])
        bp.add_url_rule("/v1/models/<path:model>", view_func=self.model, methods=["GET"])
        bp.add_url_rule("/v1/completions", view_func=self.completions, methods=["POST"])
        bp.add_url_rule("/v1/chat/completions", view_func=self.chat_completions,
                        methods=["POST"])
        bp.add_url_rule("/v1/embeddings", view_func=self.embeddings, methods=["POST"])
        return bp

    def _model_object(self, mid: str) -> dict[str, Any]:
        return {"id": mid, "object": "model", "created": self.rt.models_created(),
                "owned_by": "surefoot"}

    def models(self) -> Response:
        data = [self._model_object(mid) for mid in self.rt.served_models()]
        return jsonify({"object": "list", "data": data})

    def model(self, model: str) -> Response:
        served = self.rt.served_models()
        if model not in served:
            raise oa.ModelNotFound(model, served)
        return jsonify(self._model_object(model))

    def completions(self) -> Response:
        internal = self.internal()
        req = oa.parse_completion(body_json(), self.rt.generation_models(), self.limits,
                                  internal)
        backend = self.rt.generation_for(req.model)
        ticket = self.rt.admit()
        tokens = getattr(backend, "stream_tokens", None)
        if (req.stream and internal and tokens is not None and len(req.prompts) == 1
                and req.n == 1 and req.plain and not req.echo):
            return self._resumable(ticket, COMPLETION, req.model, req.prompts, req.params,
                                   req.include_usage, req.resume, tokens)
        choices = Choices(backend)
        items = choices.completion_items(req)
        if req.stream:
            return stream_response(
                self.rt.metrics, ticket, COMPLETION, req.model, items,
                lambda item: choices.completion(req, item), req.include_usage,
                shape=Shape(choices.completion_formatter(req, items), choices.side_by_side),
            )
        try:
            ticket.start()
            return self._complete(req, choices, items)
        finally:
            ticket.release()

    def _complete(self, req: oa.CompletionRequest, choices: Choices,
                  items: tuple[Any, ...]) -> Response:
        start = time.perf_counter()
        out, prompt_tokens, completion_tokens = [], 0, 0
        for i, item in enumerate(items):
            choice, counts = choices.completion_whole(req, item, i)
            out.append(choice)
            prompt_tokens += counts[0]
            completion_tokens += counts[1]
        self.rt.metrics.ttft.observe(time.perf_counter() - start)
        self.rt.metrics.tokens.labels(req.model).inc(completion_tokens)
        return jsonify({
            "id": oa.new_id("cmpl"), "object": "text_completion", "created": oa.now(),
            "model": req.model, "system_fingerprint": oa.fingerprint(req.model),
            "choices": out, "usage": usage(prompt_tokens, completion_tokens),
        })

    def _resumable(self, ticket: Ticket, kind: StreamKind, model: str,
                   inputs: tuple[Any, ...], params: oa.SamplingParams, include_usage: bool,
                   resume: oa.Resume | None, tokens: Callable[..., Iterator[Delta]],
                   spec: Any = None) -> Response:
        resumed = resume.tokens if resume else ()
        chars = resume.chars if resume else 0
        extra = {"spec": spec} if spec is not None else {}
        return stream_response(
            self.rt.metrics, ticket, kind, model, inputs,
            lambda x: tokens(x, params, resumed, chars, **extra), include_usage,
            resumable=True, resume=resume,
        )

    def chat_completions(self) -> Response:
        internal = self.internal()
        req = oa.parse_chat(body_json(), self.rt.generation_models(), self.limits, internal)
        backend = self.rt.generation_for(req.model)
        ticket = self.rt.admit()
        tokens = getattr(backend, "stream_tokens", None)
        choices = Choices(backend)
        if req.stream and internal and tokens is not None and req.resumable:
            # a format (a grammar) resumes too: the grammar goes on past the resumed tokens
            spec = (None if req.constraint is None
                    else choices.chat_spec(req, choices.chat_items(req)[0]))
            return self._resumable(ticket, CHAT, req.model, (req.messages,), req.params,
                                   req.include_usage, req.resume, tokens, spec)
        items = choices.chat_items(req)
        if req.stream:
            return stream_response(
                self.rt.metrics, ticket, CHAT, req.model, items,
                lambda item: choices.chat(req, item), req.include_usage,
                shape=Shape(choices.chat_formatter(req), choices.side_by_side),
            )
        out, prompt_tokens, completion_tokens = [], 0, 0
        try:
            ticket.start()
            for i, item in enumerate(items):
                choice, counts = choices.chat_whole(req, item, i)
                out.append(choice)
                prompt_tokens += counts[0]
                completion_tokens += counts[1]
        finally:
            ticket.release()
        self.rt.metrics.tokens.labels(req.model).inc(completion_tokens)
        return jsonify({
            "id": oa.new_id("chatcmpl"), "object": "chat.completion", "created": oa.now(),
            "model": req.model, "system_fingerprint": oa.fingerprint(req.model),
            "choices": out, "usage": usage(prompt_tokens, completion_tokens),
        })

    def embeddings(self) -> Response:
        req = oa.parse_embedding(body_json(), self.rt.embedding_models(), self.limits)
        backend = self.rt.embedding_for(req.model)
        if req.dimensions is not None and req.dimensions != backend.dimensions:
            raise oa.RequestInvalid([oa.FieldError(
                "dimensions", f"{req.model} gives {backend.dimensions} dimensions only, "
                f"got {req.dimensions}")])
        ticket = self.rt.admit()
        try:
            ticket.start()
            vectors, tokens = backend.embed(req.inputs)
        finally:
            ticket.release()
        data = [{"object": "embedding", "index": i, "embedding": _encode(vec, req.encoding_format)}
                for i, vec in enumerate(vectors)]
        return jsonify({"object": "list", "data": data, "model": req.model,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

"""``surefoot serve``: the container entrypoint of a Knative revision (one replica)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from surefoot.cli import CliError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the OpenAI API from one model instance (a replica)",
        description="Serve the OpenAI HTTP API. Every flag also reads SUREFOOT_<NAME>.",
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model", help="GGUF path or 'gemma-3-270m' (default)")
    p.add_argument("--model-id", help="name the API serves the model under")
    p.add_argument("--embedding-model", help="sentence-transformers folder, alias, or '' for none")
    p.add_argument("--n-ctx", type=int)
    p.add_argument("--n-threads", type=int)
    p.add_argument("--n-gpu-layers", type=int, help="-1 offloads every layer (GPU node)")
    p.add_argument("--cuda", action="store_const", const=True, help="embeddings on CUDA")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--queue-capacity", type=int, help="requests admitted at once")
    p.add_argument("--grace-seconds", type=float)
    p.add_argument("--replica")
    p.add_argument("--revision")
    p.add_argument("--node")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-interval", type=float)
    p.add_argument("--redis-url")
    p.add_argument("--standby", action="store_const", const=True,
                   help="load the models, serve nothing until POST /admin/adopt")
    p.set_defaults(func=run)


_FLAGS = (
    "host", "port", "model", "model_id", "embedding_model", "n_ctx", "n_threads",
    "n_gpu_layers", "cuda", "max_tokens", "queue_capacity", "grace_seconds", "replica",
    "revision", "node", "checkpoint_dir", "checkpoint_interval", "redis_url", "standby",
)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from knative.breakers import (
        BreakerRegistrySettings,
        InvalidBreakerSettings,
        check_credentials,
    )
    from knative.serving import (
        ModelLoadError,
        ServeSettings,
        SettingsError,
        generation_model_id,
        resolve_gguf,
        serve,
    )

    overrides = {k: getattr(args, k) for k in _FLAGS}
    overrides["log_level"] = args.log_level
    try:
        settings = ServeSettings.from_env(os.environ, **overrides)
        # Readiness follows the node's breaker when there is a Redis and a node, with the
        # breaker settings every process of the system reads from its environment.
        breakers = (BreakerRegistrySettings.from_env(os.environ, redis_url=settings.redis_url)
                    if settings.redis_url and (settings.node or settings.standby) else None)
        if breakers is not None:
            check_credentials(breakers.redis_url)
        # Resolve once, here: fail fast with one line before forking a worker, and spare the
        # worker a second pass over the model file (the packaged model is sha256-checked).
        path = str(resolve_gguf(settings.model))
        if path != settings.model:
            settings = replace(settings, model=path,
                               model_id=settings.model_id or generation_model_id(settings.model))
    except (SettingsError, InvalidBreakerSettings, ModelLoadError) as exc:
        raise CliError(str(exc)) from exc
    return serve(settings, breakers=breakers)

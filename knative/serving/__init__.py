"""The serving replica: the OpenAI HTTP API over one model instance per process (llama.cpp for
generation, torch for embeddings), its probes, drain, checkpoints and node quarantine watch."""

from knative.serving._app import create_app, runtime_of
from knative.serving._backends import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_GENERATION_MODEL,
    BackendError,
    ContextOverflow,
    EmbeddingBackend,
    EngineBusy,
    GenerationBackend,
    LlamaCppBackend,
    ModelLoadError,
    generation_model_id,
    resolve_gguf,
)
from knative.serving._checkpoint import attach as attach_checkpoints
from knative.serving._embedding import SentenceTransformerBackend
from knative.serving._quarantine import NodeBreakerWatch
from knative.serving._runtime import Runtime, Unavailable, load_models
from knative.serving._server import serve
from knative.serving._settings import ServeSettings, SettingsError

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_GENERATION_MODEL",
    "BackendError",
    "ContextOverflow",
    "EmbeddingBackend",
    "EngineBusy",
    "GenerationBackend",
    "LlamaCppBackend",
    "ModelLoadError",
    "NodeBreakerWatch",
    "Runtime",
    "SentenceTransformerBackend",
    "ServeSettings",
    "SettingsError",
    "Unavailable",
    "attach_checkpoints",
    "create_app",
    "generation_model_id",
    "load_models",
    "resolve_gguf",
    "runtime_of",
    "serve",
]

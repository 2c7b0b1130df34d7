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

Every file is written to a temporary name in the same folder, flushed to the disk (``fsync`` of
the file, then of the folder) and renamed (``os.replace``); ``save_last`` moves the former
``last.pt`` to ``previous.pt`` only once the new file is durable, so a power or node failure
leaves at least one whole checkpoint. A state whose model holds a non-finite value is never
written (``CheckpointError``), so neither ``last.pt`` nor ``previous.pt`` can be a NaN model.

Choosing where to resume (``choose_resume``): ``last.pt``, else ``previous.pt`` with a note
naming the unreadable ``last.pt``; a folder whose checkpoints all fail to read is an error
naming them, never a silent fresh start.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_path, fsync_dir, fsync_file, temporary_name
from glioseg.model.state_dict import unwrap_model

CHECKPOINT_FORMAT = "glioseg-train/1"
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


class CheckpointError(GliosegError, ValueError):
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
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": list(rng),
        "best": dict(best or {}),
        "extra": dict(extra or {}),
    }
    _check_plain(state, "checkpoint")
    return state


def non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding a nan or an inf (one host
    sync per device the tensors are on, not one per tensor)."""
    names = [k for k, v in tensors.items()
             if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]
    by_device: dict[torch.device, list[str]] = {}
    for k in names:
        by_device.setdefault(tensors[k].device, []).append(k)
    finite: dict[str, bool] = {}
    for keys in by_device.values():  # the checks stacked where they ran, then one copy back
        ok = torch.stack([torch.isfinite(tensors[k]).all() for k in keys]).cpu().tolist()
        finite.update(zip(keys, ok, strict=True))
    return [k for k in names if not finite[k]]


def _refuse_non_finite(state: Any, path: Path) -> None:
    """``CheckpointError`` naming ``path`` and the tensors when a training state's model (or a
    model state dict) holds a non-finite value."""
    if not isinstance(state, Mapping):
        return
    model = state.get("model") if isinstance(state.get("model"), Mapping) else None
    if model is None and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        model = state  # a bare state dict
    bad = non_finite(model) if model is not None else []
    if bad:
        raise CheckpointError(
            f"{path}: not written: the model holds non-finite values (nan or inf) in "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the checkpoints already "
            "there are kept; resume from them with a lower optim.lr or train.amp=none")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename onto it (``atomic_path``
    fsyncs the file before the rename and the folder after). A training state with non-finite
    model weights is refused."""
    path = Path(path)
    _refuse_non_finite(obj, path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_last(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``last.pt``; the former ``last.pt`` becomes ``previous.pt``.

    Order: the new state goes to a temporary file, which is fsync'ed with its folder; only
    then is ``last.pt`` renamed to ``previous.pt`` and the temporary renamed to ``last.pt``
    (and the folder fsync'ed again). Whenever the machine stops, ``last.pt`` or ``previous.pt``
    is a whole checkpoint. A state with non-finite model weights is refused before anything
    is written.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST
    _refuse_non_finite(state, last)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(last)
    try:
        torch.save(dict(state), tmp)
        fsync_file(tmp)
        fsync_dir(run_dir)
        if last.is_file():
            os.replace(last, run_dir / PREVIOUS)
        os.replace(tmp, last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(run_dir)
    return last


def save_best(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``best.pt`` (durably, as ``atomic_save``)."""
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


@dataclass
class ResumeChoice:
    """Where a run resumes: the checkpoint file, its state, and notes on the checkpoints passed
    over (``"RUN/last.pt: unreadable checkpoint (...)"``), to be reported."""

    path: Path
    state: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return int(self.state["step"])


def load_usable(path: str | Path) -> dict[str, Any]:
    """``load_checkpoint``, and a ``CheckpointError`` too when the model it holds is not finite
    (a checkpoint written before non-finite weights were refused)."""
    state = load_checkpoint(path)
    model = state.get("model")
    bad = non_finite(model) if isinstance(model, Mapping) else []
    if bad:
        raise CheckpointError(f"{path}: the model holds non-finite values (nan or inf) in "
                              f"{', '.join(bad[:5])}")
    return state


def choose_resume(run_dir: str | Path) -> ResumeChoice | None:
    """The checkpoint a run in ``run_dir`` resumes from: ``last.pt`` when it is usable, else
    ``previous.pt`` (with a note naming ``last.pt`` and why it was passed over); None when the
    folder holds neither file (a fresh run).

    Raises:
        CheckpointError: when ``last.pt`` or ``previous.pt`` exists but none can be used; the
            message names each file and its problem (starting afresh would overwrite the run).
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    for name in (LAST, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = load_usable(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        return ResumeChoice(path, state, [f"{p}; resuming from {name} (step {state['step']})"
                                          for p in problems])
    if problems:
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from can be read ({'; '.join(problems)}); "
            "the run folder was left as it is: move those files away to start afresh in it, "
            "or use another --out")
    return None


def find_resumable(run_dir: str | Path) -> Path | None:
    """The path ``choose_resume`` picks, or None for a folder without checkpoints (raises as
    it does when they exist but none is usable)."""
    choice = choose_resume(run_dir)
    return None if choice is None else choice.path


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
    unwrap_model(model).load_state_dict(state["model"])
    if optimizer is not None:
        from glioseg.train.schedule import keep_kernels

        kernels = {k: bool(optimizer.param_groups[0].get(k)) for k in ("fused", "foreach")}
        optimizer.load_state_dict(state["optimizer"])
        keep_kernels(optimizer, kernels)  # the saved run's device chose its own
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
    _refuse_non_finite(unwrap_model(model).state_dict(), out_dir / "model.safetensors")
    save_model(out_dir, unwrap_model(model), card)
    return out_dir

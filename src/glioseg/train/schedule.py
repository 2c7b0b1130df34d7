"""Learning-rate schedules (pure functions of the step) and the optimizers.

The schedules return the learning rate for ``step`` in ``[0, total]``; :func:`set_lr` writes it
into an optimizer, multiplied by each parameter group's ``lr_scale`` (layer-wise learning rates
of :mod:`glioseg.transfer.freeze`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from glioseg.errors import InputError


def _check(step: int, total: int) -> None:
    if total <= 0:
        raise InputError(f"total steps must be positive, got {total}")
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}")


def poly_lr(step: int, total: int, base: float, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial decay: ``base * (1 - step / total) ** exponent``; 0 from ``total`` on."""
    _check(step, total)
    return base * (1 - min(step, total) / total) ** exponent


def warmup_cosine_lr(step: int, total: int, base: float, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up then cosine decay.

    ``step < warmup``: ``base * (step + 1) / warmup`` (never 0, reaches ``base`` at the last
    warm-up step); then ``min_lr + (base - min_lr) * (1 + cos(pi * s / (total - warmup))) / 2``
    with ``s = step - warmup``, which is ``base`` at ``s = 0`` and ``min_lr`` at ``step = total``.
    """
    _check(step, total)
    if not 0 <= warmup < total:
        raise InputError(f"warmup must be in [0, total), got {warmup} for total {total}")
    if step < warmup:
        return base * (step + 1) / warmup
    s = min(step, total) - warmup
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * s / (total - warmup)))


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    name: str = "sgd",
    lr: float = 1e-2,
    weight_decay: float = 3e-5,
    momentum: float = 0.99,
) -> torch.optim.Optimizer:
    """``sgd``: SGD with Nesterov momentum (nnU-Net: lr 1e-2, momentum 0.99, weight decay 3e-5);
    ``adamw``: AdamW (``momentum`` unused; typical lr 1e-4 to 1e-3, weight decay 1e-2 to 1e-5).

    ``params`` may be parameters or parameter groups (dicts with ``params`` and optionally
    ``lr``/``lr_scale``/``weight_decay``); a group's ``lr_scale`` (default 1) multiplies ``lr``.
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = []
        for g in params:
            g = dict(g)
            g.setdefault("lr_scale", 1.0)
            g.setdefault("lr", lr * g["lr_scale"])
            groups.append(g)
        params = groups
    kernels = optimizer_kernels(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay, **kernels)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kernels)
    raise InputError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")


def optimizer_kernels(params: Iterable[Any]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is on a GPU (one kernel launch for the whole
    update: torch's fused AdamW / SGD), else ``{"foreach": True}`` (the multi-tensor update;
    on CPU torch's default is a Python loop over parameters). Same update either way, to
    float rounding (tested)."""
    tensors: list[torch.Tensor] = []
    for p in params:
        tensors += list(p["params"]) if isinstance(p, dict) else [p]
    if tensors and all(t.device.type == "cuda" for t in tensors):
        return {"fused": True}
    return {"foreach": True}


def keep_kernels(optimizer: torch.optim.Optimizer, kernels: dict[str, bool]) -> None:
    """Put back the update kernels chosen for this run's device after
    ``optimizer.load_state_dict``, which copies them from the checkpoint (a run saved on a GPU
    and resumed on a CPU, or the reverse)."""
    for group in optimizer.param_groups:
        group["fused"] = kernels.get("fused", False) or None
        group["foreach"] = kernels.get("foreach", False) or None


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group.get("lr_scale", 1)``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "poly") -> float:
    """Multiplier of the peak learning rate at ``step`` (for ``torch.optim.lr_scheduler.LambdaLR``;
    the training run's schedule).

    Linear warm-up ``(step + 1) / w`` for the first ``w = min(warmup_steps, total_steps - 1)``
    steps, then ``poly`` (:func:`poly_lr` over the remaining steps), ``cosine``
    (:func:`warmup_cosine_lr` down to 0) or ``constant`` (1). A run no longer than its warm-up
    ramps up over all but its last step, so it still reaches the peak.
    """
    _check(step, total_steps)
    if warmup_steps < 0:
        raise InputError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind not in ("poly", "cosine", "constant"):
        raise InputError(f"unknown schedule {kind!r}; use 'poly', 'cosine' or 'constant'")
    warmup = min(warmup_steps, total_steps - 1)
    if step < warmup:
        return (step + 1) / warmup
    if kind == "poly":
        return poly_lr(step - warmup, total_steps - warmup, 1.0)
    if kind == "cosine":
        return warmup_cosine_lr(step, total_steps, 1.0, warmup, 0.0)
    return 1.0

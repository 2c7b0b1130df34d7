"""Fine-tuning strategies: which parameters train, and at which learning rate.

The model's ``stage_groups()`` orders its parameters by depth, from the input to the head; its
``encoder_prefixes`` say which of them form the encoder. On top of that:

- ``full``: everything trains.
- ``frozen-encoder``: the encoder is frozen, the decoder and heads train.
- ``gradual``: training starts with the head only and unfreezes one more stage group, from the
  head towards the input, at regular steps (:func:`gradual_trainable`); call
  :func:`apply_gradual` every step. The optimizer holds every parameter from the start: a frozen
  one simply has no gradient, which SGD and AdamW skip.
- ``discriminative``: ``full`` with layer-wise learning rates (``layer_decay`` 0.7 unless given).

Any strategy takes ``layer_decay`` (< 1): the group at depth ``d`` counted from the head
(``d = 0``) gets ``lr_scale = layer_decay ** d``, so layers near the input, which hold the most
generic features, move least. :func:`glioseg.train.schedule.set_lr` applies ``lr_scale``.

Normalisation layers (InstanceNorm / GroupNorm / LayerNorm affine scale and shift) stay
trainable in frozen groups unless ``train_norms=False``: they are a few hundred numbers, and
re-fitting them lets frozen filters re-centre and re-scale their responses to a new site's
intensity statistics -- the cheapest known domain adaptation (as in AdaBN and norm-only
fine-tuning) -- at no risk of overfitting the small target set. Frozen-group norms get the
learning rate of the shallowest trainable group.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from glioseg.errors import GliosegError
from glioseg.model.state_dict import unwrap_model

STRATEGIES = ("full", "frozen-encoder", "gradual", "discriminative")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class StrategyError(GliosegError, ValueError):
    """An unknown strategy or a model without the staged interface."""


def stage_parameters(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """Named parameters per ``stage_groups()`` entry, input first (each parameter once)."""
    net = unwrap_model(model)
    if not hasattr(net, "stage_groups"):
        raise StrategyError(f"{type(net).__name__} has no stage_groups(): build it with the registry")
    groups = net.stage_groups()
    out: list[list[tuple[str, nn.Parameter]]] = [[] for _ in groups]
    for name, p in net.named_parameters():
        hits = [i for i, g in enumerate(groups) if name.startswith(tuple(g))]
        if len(hits) != 1:
            raise StrategyError(f"parameter {name} is in {len(hits)} stage groups, expected 1")
        out[hits[0]].append((name, p))
    return out


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the affine parameters of normalisation layers."""
    net = unwrap_model(model)
    names = set()
    for mod_name, module in net.named_modules():
        if isinstance(module, _NORMS):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def encoder_group_count(model: nn.Module) -> int:
    """How many leading stage groups form the encoder."""
    net = unwrap_model(model)
    prefixes = tuple(getattr(net, "encoder_prefixes", ()))
    if not prefixes:
        raise StrategyError(f"{type(net).__name__} does not declare encoder_prefixes")
    groups = net.stage_groups()
    n = 0
    for g in groups:
        if all(p.startswith(prefixes) for p in g):
            n += 1
        else:
            break
    return n


def gradual_trainable(step: int, total: int, n_stages: int) -> int:
    """Number of stage groups, counted from the head, that train at ``step`` of ``total``.

    1 (the head) at step 0, one more every ``total / n_stages`` steps, all ``n_stages`` for the
    last stretch: ``min(n_stages, 1 + floor(step * n_stages / total))``.
    """
    if total <= 0 or n_stages <= 0:
        raise ValueError(f"total and n_stages must be positive, got {total}, {n_stages}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(n_stages, 1 + math.floor(step * n_stages / total))


def param_groups(
    model: nn.Module,
    strategy: str = "full",
    *,
    layer_decay: float | None = None,
    train_norms: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``strategy`` (see the module docstring); sets
    ``requires_grad`` to match. Each group: ``params``, ``name``, ``lr_scale``, ``depth``
    (stage groups from the head). Frozen parameters are in no group, except under ``gradual``.
    """
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown fine-tuning strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if layer_decay is None:
        layer_decay = 0.7 if strategy == "discriminative" else 1.0
    if not 0 < layer_decay <= 1:
        raise StrategyError(f"layer_decay must be in (0, 1], got {layer_decay}")
    stages = stage_parameters(model)
    n = len(stages)
    frozen = set()
    if strategy == "frozen-encoder":
        frozen = set(range(encoder_group_count(model)))
    norms = norm_parameter_names(model) if train_norms else set()
    first_trainable = min((i for i in range(n) if i not in frozen), default=n - 1)
    groups: list[dict[str, Any]] = []
    frozen_norms: list[nn.Parameter] = []
    for i, named in enumerate(stages):
        depth = n - 1 - i
        params = []
        for name, p in named:
            if i in frozen:
                p.requires_grad_(name in norms)
                if name in norms:
                    frozen_norms.append(p)
            else:
                p.requires_grad_(True)
                params.append(p)
        if params:
            groups.append({"params": params, "name": f"stage {i}", "depth": depth,
                           "lr_scale": layer_decay**depth})
    if frozen_norms:
        groups.append({"params": frozen_norms, "name": "norms of frozen stages",
                       "depth": n - 1 - first_trainable,
                       "lr_scale": layer_decay ** (n - 1 - first_trainable)})
    if strategy == "gradual":
        apply_gradual(model, 0, 1, train_norms=train_norms)
    return groups


def apply_gradual(model: nn.Module, step: int, total: int, *, train_norms: bool = True) -> int:
    """Set ``requires_grad`` for :func:`gradual_trainable` at ``step``; returns how many stage
    groups (from the head) train. Norm affine parameters always train when ``train_norms``."""
    stages = stage_parameters(model)
    k = gradual_trainable(step, total, len(stages))
    norms = norm_parameter_names(model) if train_norms else set()
    for i, named in enumerate(stages):
        on = i >= len(stages) - k
        for name, p in named:
            p.requires_grad_(on or name in norms)
    return k


def gated_param_groups(
    model: nn.Module, *, layer_decay: float = 1.0, train_norms: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups for ``gradual`` fine-tuning driven by the learning rate instead of
    ``requires_grad``: every parameter keeps ``requires_grad=True`` and a group whose stage is
    still frozen gets a learning-rate factor of 0 (:func:`gradual_lr_gate`).

    With AdamW or SGD a zero learning rate leaves the weights exactly unchanged (decoupled weight
    decay is scaled by the learning rate too). Unlike toggling ``requires_grad`` this is safe
    under DistributedDataParallel, which fixes the set of parameters it synchronises when it
    wraps the model. Each stage gives a group of its non-norm parameters (``gated: True``) and,
    when ``train_norms``, one of its norm affine parameters (``gated: False``, always training).
    """
    if not 0 < layer_decay <= 1:
        raise StrategyError(f"layer_decay must be in (0, 1], got {layer_decay}")
    stages = stage_parameters(model)
    n = len(stages)
    norms = norm_parameter_names(model) if train_norms else set()
    groups: list[dict[str, Any]] = []
    for i, named in enumerate(stages):
        depth = n - 1 - i
        for p in (p for _, p in named):
            p.requires_grad_(True)
        for gated, members in ((True, [p for k, p in named if k not in norms]),
                               (False, [p for k, p in named if k in norms])):
            if members:
                groups.append({"params": members, "depth": depth, "gated": gated,
                               "name": f"stage {i}{'' if gated else ' norms'}",
                               "lr_scale": layer_decay**depth})
    return groups


def gradual_lr_gate(group: dict[str, Any], step: int, total: int, n_stages: int) -> float:
    """1.0 when ``group`` (from :func:`gated_param_groups`) trains at ``step`` of ``total``,
    else 0.0: stages unfreeze from the head (depth 0) towards the input."""
    if not group.get("gated", False):
        return 1.0
    return 1.0 if group["depth"] < gradual_trainable(step, total, n_stages) else 0.0


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(unwrap_model(model).parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def freeze_summary(model: nn.Module) -> str:
    trainable, total = count_trainable(model)
    return f"{trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.1f}%)"


__all__ = [
    "STRATEGIES",
    "StrategyError",
    "apply_gradual",
    "count_trainable",
    "encoder_group_count",
    "freeze_summary",
    "gated_param_groups",
    "gradual_lr_gate",
    "gradual_trainable",
    "norm_parameter_names",
    "param_groups",
    "stage_parameters",
]

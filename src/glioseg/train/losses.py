"""Losses over the region channels (WT, TC, ET): soft Dice + BCE, with deep supervision.

The regions overlap (ET in TC in WT), so every channel is an independent sigmoid output and
the losses are per channel, as in nnU-Net's region-based training for BraTS.

Layouts: ``logits`` ``(B, R, X, Y, Z)`` float (before the sigmoid), ``target`` ``(B, R, X, Y, Z)``
float or bool in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glioseg.errors import InputError


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``1 - mean`` soft Dice of ``sigmoid(logits)`` against ``target``.

    Per channel ``c`` (and per sample unless ``batch_dice``), with ``p = sigmoid(logits)``::

        dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)

    the sums running over the voxels (and over the batch when ``batch_dice``). ``smooth`` is in
    numerator and denominator (nnU-Net uses 1e-5): it makes an empty target with an empty
    prediction score 1 instead of 0/0, and is too small to bias non-empty channels. The mean is
    over channels (and samples). Per-sample Dice weighs every case alike; batch Dice treats the
    batch as one volume, which is steadier when many patches hold little tumour.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    p = torch.sigmoid(logits.float())
    t = target.float()
    dims = tuple(range(2, p.ndim))
    if batch_dice:
        dims = (0, *dims)
    intersection = (p * t).sum(dims)
    denominator = p.sum(dims) + t.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean()


class DiceBCELoss(nn.Module):
    """``dice_weight * soft_dice_loss + bce_weight * BCE-with-logits`` (BCE mean over voxels)."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        *,
        batch_dice: bool = False,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_loss(logits, target, batch_dice=self.batch_dice, smooth=self.smooth)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.dice_weight * dice + self.bce_weight * bce


def deep_supervision_weights(n_scales: int) -> list[float]:
    """nnU-Net's weights: ``1 / 2**i`` for scale ``i`` (0 = full resolution), the coarsest
    scale 0 (when there are at least two), normalised to sum to 1."""
    if n_scales < 1:
        raise InputError(f"need at least one output scale, got {n_scales}")
    w = [1 / 2**i for i in range(n_scales)]
    if n_scales > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Binary regions ``(B, R, X, Y, Z)`` -> ``(B, R, *size)``.

    ``nearest`` keeps one voxel per block (nnU-Net's order-0 resampling of the labels);
    ``maxpool`` marks a coarse voxel when any voxel of its block is set (small structures
    never vanish from coarse targets).
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    t = target.float()
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest")
    if mode == "maxpool":
        return F.adaptive_max_pool3d(t, size)
    raise InputError(f"unknown target downsampling {mode!r}; use 'nearest' or 'maxpool'")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the model's output scales.

    ``outputs`` is one logits tensor (then plain ``loss``) or a list, full resolution first, as
    the models return in training; ``target`` is at full resolution and is downsampled to each
    scale with ``downsample_target(mode=target_downsampling)``. Weights: explicit ``weights`` or
    :func:`deep_supervision_weights` for the number of outputs.
    """

    def __init__(
        self,
        loss: nn.Module | None = None,
        weights: Sequence[float] | None = None,
        target_downsampling: str = "nearest",
    ) -> None:
        super().__init__()
        self.loss = loss if loss is not None else DiceBCELoss()
        self.weights = None if weights is None else [float(w) for w in weights]
        if target_downsampling not in ("nearest", "maxpool"):
            raise InputError(f"unknown target downsampling {target_downsampling!r}")
        self.target_downsampling = target_downsampling

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
                ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise InputError(f"{len(outputs)} outputs but {len(weights)} deep-supervision weights")
        total = torch.zeros((), device=outputs[0].device, dtype=torch.float32)
        for w, out in zip(weights, outputs, strict=True):
            if w == 0:
                continue
            t = downsample_target(target, out.shape[2:], self.target_downsampling)
            total = total + w * self.loss(out, t)
        return total


def make_region_loss(
    deep_supervision: bool = True,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    batch_dice: bool = False,
    target_downsampling: str = "nearest",
) -> nn.Module:
    """The training loss: ``loss(logits or list of logits, target (B, 3, X, Y, Z)) -> scalar``.

    Soft Dice + BCE over the region channels; wrapped in :class:`DeepSupervisionLoss` (which
    also takes a single tensor) when the model has deep supervision.
    """
    base = DiceBCELoss(dice_weight, bce_weight, batch_dice=batch_dice)
    if deep_supervision:
        return DeepSupervisionLoss(base, target_downsampling=target_downsampling)
    return base

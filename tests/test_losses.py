"""Region losses against hand computation, MONAI's DiceLoss and torch's BCE."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from glioseg.train.losses import (
    DeepSupervisionLoss,
    DiceBCELoss,
    deep_supervision_weights,
    downsample_target,
    soft_dice_loss,
)


def test_dice_by_hand_on_two_voxels():
    # logits 0 -> p = 0.5 on both voxels; target (1, 0):
    # dice = (2 * 0.5 + s) / (1.0 + 1 + s) = (1 + s) / (2 + s)
    logits = torch.zeros(1, 1, 2, 1, 1)
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    s = 1e-5
    assert soft_dice_loss(logits, target, smooth=s).item() == pytest.approx(1 - (1 + s) / (2 + s))


def test_empty_target_and_empty_prediction_is_no_loss():
    logits = torch.full((1, 3, 4, 4, 4), -30.0)
    assert soft_dice_loss(logits, torch.zeros_like(logits)).item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_matches_monai(batch_dice):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g)
    target = (torch.rand(2, 3, 6, 5, 4, generator=g) > 0.7).float()
    ref = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch_dice)(logits, target)
    got = soft_dice_loss(logits, target, batch_dice=batch_dice)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_dice_bce_by_hand():
    g = np.random.default_rng(1)
    logits = g.normal(size=(1, 3, 3, 2, 2))
    target = (g.random((1, 3, 3, 2, 2)) > 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    bce = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    inter = (p * target).sum(axis=(2, 3, 4))
    den = p.sum(axis=(2, 3, 4)) + target.sum(axis=(2, 3, 4))
    dice = 1 - ((2 * inter + 1e-5) / (den + 1e-5)).mean()
    got = DiceBCELoss(dice_weight=0.7, bce_weight=1.3)(torch.tensor(logits), torch.tensor(target))
    assert got.item() == pytest.approx(0.7 * dice + 1.3 * bce, rel=1e-5)
    tb = torch.tensor(target)
    assert F.binary_cross_entropy_with_logits(torch.tensor(logits), tb).item() == pytest.approx(bce)


def test_deep_supervision_weights_like_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    w = deep_supervision_weights(5)
    assert w == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875, 0.0])
    assert math.isclose(sum(w), 1.0)


def _blocks_max(t: np.ndarray, f: int) -> np.ndarray:
    b, c, x, y, z = t.shape
    return t.reshape(b, c, x // f, f, y // f, f, z // f, f).max(axis=(3, 5, 7))


def test_downsample_target_nearest_and_maxpool():
    g = np.random.default_rng(2)
    t = (g.random((1, 3, 8, 8, 4)) > 0.8).astype(np.float32)
    near = downsample_target(torch.tensor(t), (4, 4, 2), "nearest").numpy()
    np.testing.assert_array_equal(near, t[:, :, ::2, ::2, ::2])
    mx = downsample_target(torch.tensor(t), (2, 2, 1), "maxpool").numpy()
    np.testing.assert_array_equal(mx, _blocks_max(t, 4))


@pytest.mark.parametrize("mode", ["nearest", "maxpool"])
def test_deep_supervision_loss_is_the_weighted_sum(mode):
    g = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 3, 8, 8, 8, generator=g) > 0.6).float()
    outputs = [torch.randn(2, 3, 8 // 2**i, 8 // 2**i, 8 // 2**i, generator=g) for i in range(3)]
    base = DiceBCELoss()
    t = target.numpy()
    if mode == "nearest":
        targets = [t, t[:, :, ::2, ::2, ::2], t[:, :, ::4, ::4, ::4]]
    else:
        targets = [t, _blocks_max(t, 2), _blocks_max(t, 4)]
    expected = sum(w * base(o, torch.tensor(tt)).item() for w, o, tt in
                   zip([2 / 3, 1 / 3, 0.0], outputs, targets, strict=True))
    got = DeepSupervisionLoss(base, target_downsampling=mode)(outputs, target)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # one tensor: the plain loss
    assert DeepSupervisionLoss(base)(outputs[0], target).item() == pytest.approx(
        base(outputs[0], target).item())


def test_loss_errors():
    with pytest.raises(ValueError, match="differ"):
        soft_dice_loss(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 1))
    with pytest.raises(ValueError, match="2 outputs but 3"):
        DeepSupervisionLoss(weights=[1, 1, 1])([torch.zeros(1, 3, 2, 2, 2)] * 2,
                                               torch.zeros(1, 3, 2, 2, 2))



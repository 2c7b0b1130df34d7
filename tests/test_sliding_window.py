"""Sliding-window numerics and aggregation, checked by hand, against MONAI and by properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference as monai_swi

from glioseg.infer.sliding_window import (
    MIN_WEIGHT,
    compute_steps,
    fit_roi,
    gaussian_importance_map,
    sliding_window_inference,
    window_slices,
)
from glioseg.infer.tta import mirror_combinations, mirrored

torch.set_num_threads(1)


def small_net(seed: int = 0, kernel: int = 3) -> torch.nn.Module:
    """Stand-in conv net 4 -> 3 channels with a receptive field (no normalisation layers)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(4, 6, kernel, padding=kernel // 2),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Conv3d(6, 3, kernel, padding=kernel // 2),
    ).eval()


def test_steps_by_hand() -> None:
    # 240 voxels, 128 window, step 0.5: ceil(112 / 64) + 1 = 3 steps spread over 0..112.
    assert compute_steps((240, 155, 128), (128, 128, 128), 0.5) == [[0, 56, 112], [0, 27], [0]]
    # 100 voxels, 40 window, overlap 0.25: ceil(60 / 30) + 1 = 3 steps, spacing 30.
    assert compute_steps((100, 40, 41), (40, 40, 40), 0.25) == [[0, 30, 60], [0], [0, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_windows_cover_every_voxel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    roi = tuple(int(r) for r in rng.integers(3, 12, size=3))
    size = tuple(int(r + e) for r, e in zip(roi, rng.integers(0, 30, size=3), strict=True))
    overlap = float(rng.uniform(0, 0.9))
    covered = np.zeros(size, dtype=bool)
    for s in window_slices(size, roi, overlap):
        assert all(sl.stop - sl.start == r for sl, r in zip(s, roi, strict=True))
        assert all(0 <= sl.start and sl.stop <= n for sl, n in zip(s, size, strict=True))
        covered[s] = True
    assert covered.all()
    for axis_steps, r in zip(compute_steps(size, roi, overlap), roi, strict=True):
        gaps = np.diff(axis_steps)
        assert (gaps <= r * (1 - overlap) + 1).all() and (gaps > 0).all()


def test_bad_overlap_and_small_image() -> None:
    with pytest.raises(ValueError, match="overlap"):
        compute_steps((10, 10, 10), (4, 4, 4), 1.0)
    with pytest.raises(ValueError, match="smaller"):
        compute_steps((3, 10, 10), (4, 4, 4), 0.5)


@pytest.mark.parametrize("roi", [(16, 16, 16), (15, 20, 9)])
def test_gaussian_matches_monai_and_is_positive(roi: tuple[int, int, int]) -> None:
    ours = gaussian_importance_map(roi, sigma_scale=0.125)
    ref = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert (ours >= MIN_WEIGHT).all() and ours.max() <= 1.0
    assert np.array_equal(ours, ours[::-1, ::-1, ::-1])


def test_single_window_equals_direct_forward() -> None:
    net = small_net()
    x = torch.randn(4, 12, 10, 14)
    with torch.no_grad():
        direct = net(x[None])[0]
        got = sliding_window_inference(x, net, (16, 16, 16), divisor=2)
    # the volume fits one window of its own size: Gaussian weights cancel exactly
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-6)


def test_single_window_with_padding_equals_forward_on_padded() -> None:
    net = small_net(1)
    x = torch.randn(4, 11, 9, 13)
    padded = torch.zeros(1, 4, 12, 12, 16)
    padded[0, :, :11, :9, :13] = x
    with torch.no_grad():
        direct = net(padded)[0, :, :11, :9, :13]
        got = sliding_window_inference(x, net, (16, 16, 16), divisor=4)
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-6)


def test_identity_predictor_reproduces_input() -> None:
    x = torch.randn(4, 30, 21, 17)
    got = sliding_window_inference(x, lambda w: w[:, :3] * 1.0, (8, 8, 8), overlap=0.6, batch_size=3)
    torch.testing.assert_close(got, x[:3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_monai_where_window_positions_agree(batch: int) -> None:
    # 96 voxels, window 32, overlap 0.5: MONAI and nnU-Net both start at 0, 16, ..., 64.
    net = small_net(2)
    x = torch.randn(4, 96, 48, 32)
    with torch.no_grad():
        ref = monai_swi(x[None], (32, 32, 32), 2, net, overlap=0.5, mode="gaussian")[0]
        got = sliding_window_inference(x, net, (32, 32, 32), overlap=0.5, batch_size=batch)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_fit_roi() -> None:
    assert fit_roi((200, 50, 17), (128, 128, 128), 16) == (128, 64, 32)
    with pytest.raises(ValueError, match="divisible"):
        fit_roi((200, 50, 17), (100, 128, 128), 16)


def test_mirror_combinations() -> None:
    combos = mirror_combinations((0, 1, 2))
    assert combos[0] == () and len(combos) == 8 and len(set(combos)) == 8


def test_mirrored_is_flip_invariant_and_exact_for_pointwise() -> None:
    net = small_net(3)
    tta = mirrored(net)
    x = torch.randn(1, 4, 10, 8, 6)
    with torch.no_grad():
        y = tta(x)
        for dims in ([2], [3, 4], [2, 3, 4]):
            torch.testing.assert_close(tta(torch.flip(x, dims)), torch.flip(y, dims),
                                       rtol=1e-5, atol=1e-5)
        pointwise = small_net(4, kernel=1)
        torch.testing.assert_close(mirrored(pointwise)(x), pointwise(x), rtol=1e-5, atol=1e-6)


def _reference_stitch(x: torch.Tensor, net, roi, overlap: float) -> torch.Tensor:
    """The stitching written out plainly: every window's weighted logits and weights summed
    one by one into two buffers, then divided."""
    slices = window_slices(tuple(x.shape[1:]), roi, overlap)
    w = torch.from_numpy(gaussian_importance_map(roi))
    out = torch.zeros((3, *x.shape[1:]))
    norm = torch.zeros(x.shape[1:])
    for s in slices:
        out[(slice(None), *s)] += net(x[(slice(None), *s)][None])[0] * w
        norm[s] += w
    return out / norm


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_stitching_equals_the_plain_sum(batch: int) -> None:
    net = small_net(5)
    x = torch.randn(4, 40, 28, 20)
    with torch.no_grad():
        got = sliding_window_inference(x, net, (16, 16, 16), overlap=0.5, batch_size=batch)
        ref = _reference_stitch(x, net, (16, 16, 16), 0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_one_unweighted_window_is_the_forward_itself() -> None:
    net = small_net(6)
    x = torch.randn(4, 13, 16, 7)  # padded to 16 x 16 x 8 (divisor 8), cropped back
    with torch.no_grad():
        got = sliding_window_inference(x, net, (16, 16, 8), gaussian=False, divisor=8)
        padded = torch.zeros(1, 4, 16, 16, 8)
        padded[0, :, :13, :, :7] = x
        want = net(padded)[0, :, :13, :, :7]
        weighted = sliding_window_inference(x, net, (16, 16, 8), gaussian=True, divisor=8)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(weighted, want, rtol=1e-6, atol=1e-6)  # w / w on one window

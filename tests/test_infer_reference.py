"""Case prediction with the project's real U-Net against an independent reference.

The reference is written here from the definitions, without project code: the brain is every
voxel where a sequence is non-zero, its bounding box is cropped, each sequence is z-scored over
the brain (0 outside), MONAI's ``sliding_window_inference`` (Gaussian mode) runs on the crop,
and the sigmoid of its logits is pasted back into a zero volume of the input's shape. Sizes are
chosen so that MONAI's window positions and ours coincide (box sides of ROI + k * ROI / 2 at
overlap 0.5), which makes the two sliding windows the same computation. Mirror test-time
augmentation is referenced by MONAI on the 8 flipped volumes (the Gaussian and these window
positions are symmetric, so flipping per volume equals flipping per window).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from glioseg.infer.export import PARITY_ATOL
from glioseg.infer.predict import CasePredictor, PredictOptions, predict_case
from glioseg.infer.sliding_window import sliding_window_inference
from glioseg.model.card import ModelCard
from glioseg.model.registry import build_model, preset

torch.set_num_threads(1)

ROI = (16, 16, 16)
SHAPE = (37, 30, 21)
BOX = (slice(3, 35), slice(6, 30), slice(5, 21))  # 32 x 24 x 16; touches the y and z ends


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(3)
    cfg = preset("small", base_width=4, max_width=16, n_stages=3, patch_size=ROI)
    return build_model(cfg).eval()


def make_image(seed: int = 0) -> np.ndarray:
    """``(4, X, Y, Z)`` float32: random positive intensities in the brain box, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *SHAPE), np.float32)
    inside = rng.uniform(0.5, 3.0, size=(4, 32, 24, 16)).astype(np.float32)
    inside[:, 8:20, 6:18, 4:12] *= 2.5  # a brighter blob, so the network sees structure
    image[(slice(None), *BOX)] = inside
    return image


def reference_probabilities(net: torch.nn.Module, image: np.ndarray, tta: bool = False) -> np.ndarray:
    """``(3, X, Y, Z)`` region probabilities from the definitions and MONAI (see module)."""
    brain = np.any(image != 0, axis=0)
    idx = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    assert box == BOX
    crop, mask = image[(slice(None), *box)].astype(np.float64), brain[box]
    z = np.zeros(crop.shape, np.float32)
    for c in range(4):
        v = crop[c][mask]
        z[c][mask] = (v - v.mean()) / v.std()
    x = torch.from_numpy(z)[None]
    flips = [list(c) for r in range(4) for c in combinations((2, 3, 4), r)] if tta else [[]]
    total = torch.zeros((1, 3, *x.shape[2:]))
    with torch.no_grad():
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            yi = monai_swi(xi, ROI, 3, net, overlap=0.5, mode="gaussian")
            total += torch.flip(yi, dims) if dims else yi
    out = np.zeros((3, *SHAPE), np.float32)
    out[(slice(None), *box)] = torch.sigmoid(total[0] / len(flips)).numpy()
    return out


def labels_by_hand(p: np.ndarray) -> np.ndarray:
    """BraTS 2021 labels from WT/TC/ET probabilities: ET 4, else TC 1, else WT 2, else 0."""
    wt, tc, et = p > 0.5
    return np.where(et, 4, np.where(tc, 1, np.where(wt, 2, 0))).astype(np.uint8)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "openvino"])
def test_case_probabilities_match_reference(net: torch.nn.Module, engine: str) -> None:
    image = make_image()
    ref = reference_probabilities(net, image)
    card = ModelCard.for_model(net)
    predictor = CasePredictor([(net, card)], PredictOptions(engine=engine, threads=1, batch=2,
                                                                mode="sliding"))
    try:
        got = predictor.probabilities(image, (1.0, 1.0, 1.0))
    finally:
        predictor.close()
    assert got.shape == ref.shape and got.dtype == np.float32
    # exported engines: logits within PARITY_ATOL, and the sigmoid's slope is at most 1/4
    atol = 1e-5 if engine == "torch" else PARITY_ATOL / 4
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    assert not got[:, ~np.any(image != 0, axis=0)].any()  # nothing outside the brain box


def test_case_labels_match_reference(net: torch.nn.Module) -> None:
    image = make_image(1)
    ref = reference_probabilities(net, image)
    decisive = (np.abs(ref - 0.5) > 1e-4).all(axis=0)
    assert decisive.mean() > 0.9
    expected = labels_by_hand(ref)
    assert len(np.unique(expected[BOX])) >= 2  # the test can tell labels apart
    got = predict_case(net, image, card=ModelCard.for_model(net), scheme="brats2021", threads=1,
                       mode="sliding")
    assert got.shape == SHAPE and got.dtype == np.uint8
    np.testing.assert_array_equal(got[decisive], expected[decisive])


def test_mirror_tta_matches_reference(net: torch.nn.Module) -> None:
    image = make_image(2)
    ref = reference_probabilities(net, image, tta=True)
    plain = reference_probabilities(net, image)
    assert np.abs(ref - plain).max() > 1e-3  # TTA changes the result: the test can fail
    predictor = CasePredictor([(net, None)], PredictOptions(tta=True, threads=1, mode="sliding"))
    try:
        got = predictor.probabilities(image, (1.0, 1.0, 1.0))
    finally:
        predictor.close()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_single_window_real_network_equals_direct_forward(net: torch.nn.Module) -> None:
    # a volume that fits one window (sides multiples of the divisor 4): one forward pass
    x = torch.randn(4, 12, 16, 8)
    with torch.no_grad():
        direct = net(x[None])[0]
    got = sliding_window_inference(x, net, ROI, overlap=0.5, divisor=4)
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_every_voxel_reconstructed_through_padding(seed: int) -> None:
    # an identity network returns each window's input: the weighted average of overlapping
    # copies is the input itself on every voxel, sides smaller than the ROI included
    rng = np.random.default_rng(seed)
    divisor = int(rng.choice([1, 2, 4]))
    roi = tuple(int(divisor * rng.integers(2, 5)) for _ in range(3))
    size = tuple(int(rng.integers(1, 3 * r)) for r in roi)
    overlap = float(rng.uniform(0, 0.8))
    x = torch.from_numpy(rng.standard_normal((2, *size)).astype(np.float32))
    calls: list[tuple[int, ...]] = []

    def identity(w: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(w.shape[2:]))
        return w * 1.0

    got = sliding_window_inference(x, identity, roi, overlap=overlap, batch_size=3,
                                   divisor=divisor)
    assert got.shape == x.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
    assert all(s % divisor == 0 and s <= r
               for shape in calls for s, r in zip(shape, roi, strict=True))

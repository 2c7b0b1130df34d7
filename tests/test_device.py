"""``glioseg.infer.device``: the labels made on the model's device equal the host's.

Each device step is checked against its host twin (``labels_from_regions``, ``apply_et_rule``,
``from_internal``, ``resample_to_shape(order=1)``, ``restore_to_original`` + ``postprocess``);
then ``CasePredictor.predict`` (the device path, one copy back) against ``probabilities`` +
``labels`` (the host path) on a random small U-Net, whose probabilities sit near 0.5, where a
difference in arithmetic would show; and the half-precision path (bf16 autocast on the CPU)
against float32 on a deterministic network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glioseg.data.labels import SCHEMES, from_internal, labels_from_regions
from glioseg.infer.device import (
    et_rule,
    labels_on_device,
    region_labels,
    resample_linear,
    resolve_dtype,
    scheme_lookup,
)
from glioseg.infer.postprocess import apply_et_rule, postprocess
from glioseg.infer.predict import CasePredictor, PredictOptions
from glioseg.model.card import ModelCard
from glioseg.model.registry import ModelConfig, build_model, preset, register_model
from glioseg.preprocess.pure import resample_to_shape, restore_to_original

torch.set_num_threads(1)


def _probs(shape, seed: int = 0) -> np.ndarray:
    """Random probabilities with exact ties at 0.5 in a few voxels."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, size=(3, *shape)).astype(np.float32)
    p.reshape(-1)[:: 97] = 0.5
    return p


def test_region_labels_equal_labels_from_regions() -> None:
    p = _probs((9, 8, 7))
    for threshold in (0.5, 0.3):
        got = region_labels(torch.from_numpy(p), threshold).numpy()
        np.testing.assert_array_equal(got, labels_from_regions(p > threshold))
        assert got.dtype == np.uint8


@pytest.mark.parametrize("n_et", [0, 3, 10])
def test_et_rule_equals_the_host_rule(n_et: int) -> None:
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[:2] = 2
    labels.reshape(-1)[:n_et] = 3
    for k in (0, 5, 11):
        got = et_rule(torch.from_numpy(labels), k).numpy()
        np.testing.assert_array_equal(got, apply_et_rule(labels, k))


def test_scheme_lookup_equals_from_internal() -> None:
    labels = np.random.default_rng(1).integers(0, 4, size=(5, 4, 3)).astype(np.uint8)
    for scheme in [None, *SCHEMES]:
        got = scheme_lookup(torch.from_numpy(labels), scheme).numpy()
        want = labels if scheme is None else from_internal(labels, scheme)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(13, 8, 7), (5, 16, 9), (10, 10, 10)])
def test_resample_linear_matches_scipy(shape) -> None:
    vol = np.random.default_rng(2).uniform(0, 1, size=(2, 10, 11, 7)).astype(np.float32)
    got = resample_linear(torch.from_numpy(vol), shape).numpy()
    want = np.stack([resample_to_shape(ch, shape, order=1) for ch in vol])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def _geometry(resampled: bool) -> dict:
    return {"original_shape": [20, 18, 12], "bbox": [[3, 17], [2, 15], [1, 11]],
            "cropped_shape": [14, 13, 10], "shape": [9, 8, 7] if resampled else [14, 13, 10]}


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize(("et_min", "scheme"), [(0, None), (40, "brats2021"), (10**6, "msd")])
def test_labels_on_device_equal_restore_then_postprocess(resampled, et_min, scheme) -> None:
    geo = _geometry(resampled)
    p = _probs(geo["shape"], seed=3)
    got = labels_on_device(torch.from_numpy(p), geo, 0.5, et_min, scheme).numpy()
    want = postprocess(restore_to_original(p, geo, order=1), scheme, et_min_voxels=et_min)
    assert got.shape == tuple(geo["original_shape"]) and got.dtype == np.uint8
    if not resampled:
        np.testing.assert_array_equal(got, want)
    else:  # float32 separable vs float64 interpolation: ties at the threshold may differ
        assert (got != want).mean() < 1e-3


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(5)
    return build_model(preset("small", base_width=4, max_width=8, n_stages=2,
                              patch_size=(16, 16, 16))).eval()


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((4, 30, 26, 19), np.float32)
    image[:, 2:28, 3:25, 1:18] = rng.uniform(0.5, 3.0, size=(4, 26, 22, 17))
    image[:, 8:18, 6:16, 4:12] *= 2.5
    return image


@pytest.mark.parametrize("options", [
    {"mode": "sliding", "batch": 3}, {"mode": "whole"},
    {"mode": "sliding", "min_component": 20, "et_min_voxels": 30},
    {"mode": "whole", "tta": True, "threshold": 0.45},
])
def test_predict_equals_the_host_path(unet: torch.nn.Module, options: dict) -> None:
    card = ModelCard.for_model(unet, label_scheme="brats2021")
    predictor = CasePredictor([(unet, card)], PredictOptions(**options))
    image = _image()
    probs = predictor.probabilities(image, (1.0, 1.0, 1.0))
    host = predictor.labels(probs, "brats2021")
    result = predictor.predict(image, (1.0, 1.0, 1.0), scheme="brats2021",
                               with_probabilities=True)
    predictor.close()
    assert 0 < (host > 0).mean() < 1  # the random network leaves some of each
    np.testing.assert_array_equal(result.labels, host)
    np.testing.assert_array_equal(result.probabilities, probs)
    assert set(result.seconds) == {"prepare", "network", "labels", "host"}


def test_auto_precision_per_engine_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import glioseg.train.loop as L

    for native, cpu in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(L, "native_bf16_cpu", lambda native=native: native)
        assert resolve_dtype("auto", "torch", "cpu") == cpu
        assert resolve_dtype("auto", "openvino", "cpu") == cpu
    assert resolve_dtype("auto", "torch", "cuda") == "fp16"
    assert resolve_dtype("auto", "onnxruntime", "cpu") == "fp32"
    assert resolve_dtype("bf16", "torch", "cpu") == "bf16"  # explicit values pass through
    assert PredictOptions(dtype="auto").resolved().dtype in ("bf16", "fp32")


class Smooth(torch.nn.Module):
    """Region k = 10 x the 3x3x3 mean of one z-scored sequence (FLAIR, T1ce, T1): a network
    with known, smooth outputs, for precision agreement."""

    divisor = 1

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.conv = torch.nn.Conv3d(cfg.in_channels, cfg.out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for k, c in enumerate((3, 1, 0)):  # flair, t1ce, t1 in MODALITIES order
                self.conv.weight[k, c] = 10.0 / 27

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


register_model("smooth-precision-test", Smooth, overwrite=True)


def test_bf16_autocast_on_the_cpu_agrees_with_float32() -> None:
    from glioseg.bench.predict import dice

    net = build_model(ModelConfig(arch="smooth-precision-test", patch_size=(16, 16, 16)))
    card = ModelCard.for_model(net, label_scheme="brats2021")
    rng = np.random.default_rng(4)
    image = np.zeros((4, 40, 36, 24), np.float32)
    image[:, 2:38, 2:34, 1:23] = rng.uniform(0.8, 1.2, size=(4, 36, 32, 22))
    image[:, 8:30, 6:28, 4:20] *= 3.0  # whole tumour, then the core and ET inside it
    image[1:2, 12:26, 10:24, 7:17] *= 2.0
    image[0:2, 15:22, 13:20, 9:15] *= 2.0
    regions, probs = {}, {}
    for dtype in ("fp32", "bf16"):
        predictor = CasePredictor([(net, card)], PredictOptions(dtype=dtype, mode="sliding",
                                                                batch=2))
        result = predictor.predict(image, (1.0, 1.0, 1.0), with_probabilities=True)
        regions[dtype], probs[dtype] = result.labels, result.probabilities
        predictor.close()
    assert not np.array_equal(probs["fp32"], probs["bf16"])  # bf16 did run
    for members in ((1, 2, 3), (1, 3), (3,)):  # WT, TC, ET (internal labels)
        a, b = (np.isin(regions[d], members) for d in ("fp32", "bf16"))
        assert a.sum() > 100
        assert dice(a, b) >= 0.99, members

"""Domain-shift analysis: MMD statistics against hand computations, features, CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glioseg.analysis import shift as S
from glioseg.analysis.features import (
    QUANTILES,
    FeatureError,
    encoder_features,
    intensity_features,
)
from glioseg.analysis.shift_run import analyse_features, analyse_shift
from glioseg.cli import app
from glioseg.data.cases import case_file_name, case_id_for
from glioseg.data.labels import MODALITIES
from glioseg.data.nifti import save_volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _direct_mmd2_u(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """Gretton et al. (2012) eq. 3 written as plain double loops with math.exp."""

    def k(a: np.ndarray, b: np.ndarray) -> float:
        d2 = sum((float(p) - float(q)) ** 2 for p, q in zip(a, b, strict=True))
        return math.exp(-d2 / (2 * h * h))

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def test_median_bandwidth_by_hand() -> None:
    # Pairwise distances: |(0,0)-(3,4)|=5, |(0,0)-(0,1)|=1, |(0,0)-(6,8)|=10,
    # |(3,4)-(0,1)|=sqrt(18), |(3,4)-(6,8)|=5, |(0,1)-(6,8)|=sqrt(85); sorted: 1, 4.243, 5, 5,
    # 9.220, 10 -> median (5 + 5) / 2 = 5.
    z = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    assert S.median_bandwidth(z) == pytest.approx(5.0)
    # Three points on a line: distances 1, 3, 2 -> median 2.
    assert S.median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)


def test_unbiased_estimator_equals_double_loop() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3))
    y = rng.normal(0.7, 1.3, size=(7, 3))
    for h in (0.5, 1.7):
        assert S.mmd2_unbiased(x, y, h) == pytest.approx(_direct_mmd2_u(x, y, h), rel=1e-10)


def test_rbf_kernel_by_hand() -> None:
    k = S.rbf_kernel(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]]), 5.0)
    assert k[0, 0] == pytest.approx(math.exp(-25 / 50))
    assert k[0, 1] == pytest.approx(1.0)


def test_same_distribution_near_zero_and_not_significant() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = rng.normal(size=(40, 4))
    res = S.mmd_test(x, y, np.random.default_rng(1), n_permutations=300)
    assert abs(res.mmd2) < 0.03
    assert res.p_value > 0.05
    assert S.shift_size(res) == "none"


def test_shifted_sample_is_significant() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    y = rng.normal(size=(30, 4)) + np.array([1.5, 0.0, 0.0, 0.0])
    res = S.mmd_test(x, y, np.random.default_rng(1), n_permutations=300)
    assert res.p_value == pytest.approx(1 / 301)  # no permutation reaches the observed value
    assert res.mmd2 > 5 * res.null_q95


def test_p_value_formula_against_direct_permutations() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 2))
    y = rng.normal(0.4, 1.0, size=(5, 2))
    n_perm = 40
    res = S.mmd_test(x, y, np.random.default_rng(11), n_permutations=n_perm)
    # Reference: standardise over the pooled sample, median bandwidth, same permutations.
    pooled = np.concatenate([x, y])
    z = (pooled - pooled.mean(0)) / pooled.std(0)
    dists = [np.linalg.norm(z[i] - z[j]) for i in range(11) for j in range(i + 1, 11)]
    h = float(np.median(dists))
    obs = _direct_mmd2_u(z[:6], z[6:], h)
    gen = np.random.default_rng(11)
    null = []
    for _ in range(n_perm):
        p = gen.permutation(11)
        null.append(_direct_mmd2_u(z[p[:6]], z[p[6:]], h))
    expected = (1 + sum(v >= obs - 1e-12 for v in null)) / (1 + n_perm)
    assert res.bandwidth == pytest.approx(h)
    assert res.mmd2 == pytest.approx(obs)
    assert res.p_value == pytest.approx(expected)


def test_bad_samples_raise() -> None:
    with pytest.raises(S.ShiftError, match="at least 2"):
        S.mmd_test(np.zeros((1, 2)), np.zeros((3, 2)), np.random.default_rng(0))
    with pytest.raises(S.ShiftError, match="features"):
        S.mmd_test(np.zeros((3, 2)), np.zeros((3, 3)), np.random.default_rng(0))


def _brain_image(rng: np.random.Generator, shape: tuple[int, int, int], gain: float = 1.0,
                 flair_skew: float = 0.0) -> np.ndarray:
    """``(4, X, Y, Z)`` float32: an ellipsoid 'brain' with two tissue classes, 0 outside."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.9
    tissue = grid[0] > 0.1
    img = np.zeros((4, *shape), np.float32)
    for c in range(4):
        a, b = 1.0 + 0.2 * c, 2.0 + 0.1 * c
        vals = np.where(tissue, b, a) + rng.normal(0, 0.15, shape)
        if c == 3 and flair_skew:
            vals = vals + flair_skew * (rng.random(shape) < 0.3)  # bright FLAIR patches
        img[c][brain] = (gain * vals[brain]).astype(np.float32)
    return img


def test_intensity_features_gain_invariant_and_correct() -> None:
    img = _brain_image(np.random.default_rng(0), (10, 9, 8))
    f1 = intensity_features("A", img, np.random.default_rng(0), n_sample=50)
    f2 = intensity_features("A", img * 7.5, np.random.default_rng(0), n_sample=50)
    np.testing.assert_allclose(f2.zscored, f1.zscored, atol=1e-5)
    np.testing.assert_allclose(f2.raw, 7.5 * f1.raw, rtol=1e-5)
    brain = np.any(img != 0, axis=0)
    flair = img[3][brain].astype(np.float64)
    ref = np.quantile((flair - flair.mean()) / flair.std(), QUANTILES)
    np.testing.assert_allclose(f1.zscored[3], ref, atol=1e-9)
    assert f1.sample.shape == (4, 50)
    with pytest.raises(FeatureError, match="B: image has no brain"):
        intensity_features("B", np.zeros((4, 3, 3, 3), np.float32), np.random.default_rng(0))


def test_gain_alone_is_not_a_shift_but_flair_change_is() -> None:
    rng = np.random.default_rng(0)
    shape = (12, 11, 10)
    src = [intensity_features(f"s{i}", _brain_image(rng, shape), rng) for i in range(8)]
    gained = [intensity_features(f"g{i}", _brain_image(rng, shape, gain=9.0), rng)
              for i in range(8)]
    res = analyse_features(src, gained, np.random.default_rng(1), n_permutations=200)
    assert res["tests"]["raw"]["overall"]["p_value"] < 0.01
    assert res["tests"]["zscored"]["overall"]["p_value"] > 0.05
    assert res["verdict"].startswith("no significant shift")
    assert any("z-scoring removes" in a for a in res["advice"])
    flair = [intensity_features(f"f{i}", _brain_image(rng, shape, flair_skew=1.5), rng)
             for i in range(8)]
    res = analyse_features(src, flair, np.random.default_rng(1), n_permutations=200)
    z = res["tests"]["zscored"]
    assert z["overall"]["p_value"] < 0.01 and z["flair"]["p_value"] < 0.01
    # Only FLAIR changed: the other sequences are far less shifted (a single p-value of an
    # unchanged sequence may still fall below 0.05 by chance, so compare effect sizes).
    assert all(z[m]["mmd2"] < z["flair"]["mmd2"] / 4 for m in ("t1", "t1ce", "t2"))
    assert "largest shift in FLAIR" in res["verdict"]
    assert res["feature_shifts"][0]["feature"].startswith("flair_")


class TinyEncoder(torch.nn.Module):
    """Stand-in for a segmentation model: two encoder stages with 3 and 5 channels."""

    divisor = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(4, 3, 3, padding=1)
        self.b = torch.nn.Conv3d(3, 5, 3, padding=1, stride=2)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        s1 = torch.relu(self.a(x))
        return [s1, torch.relu(self.b(s1))]


def test_encoder_features_match_manual_pooling() -> None:
    torch.set_num_threads(1)
    model = TinyEncoder()
    img = _brain_image(np.random.default_rng(0), (8, 6, 4))
    out = encoder_features(model, img, np.random.default_rng(0), patch_size=64, n_patches=2)
    # Patches cover the whole (already divisible) grid, so both equal the whole image.
    with torch.no_grad():
        stages = model.forward_features(torch.from_numpy(img)[None])
    ref = np.concatenate([s.mean(dim=(2, 3, 4))[0].numpy() for s in stages])
    assert out.shape == (8,)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def _write_cohort(root: Path, n: int, rng: np.random.Generator, **kw: float) -> Path:
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    for i in range(n):
        cid = case_id_for("brats2021", i)
        img = _brain_image(rng, (12, 11, 10), **kw)
        for c, mod in enumerate(MODALITIES):
            save_volume(root / cid / case_file_name("brats2021", cid, mod), img[c], affine,
                        np.float32)
    return root


def test_cli_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = _write_cohort(tmp_path / "src", 5, rng)
    tgt = _write_cohort(tmp_path / "tgt", 5, rng, gain=20.0, flair_skew=1.5)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["shift", "--source", str(src), "--target", str(tgt),
                                      "-o", str(out), "--permutations", "200", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "target differs from source" in result.output and "FLAIR" in result.output
    # the advice a shifted target implies is printed: fine-tune, and with which strategy
    advice = [line for line in result.output.splitlines() if line.startswith("- ")]
    assert any("fine-tune" in line and "encoder frozen" in line for line in advice), advice
    assert not any("Use the model as is" in line for line in advice)  # the no-shift advice
    doc = json.loads((out / "shift.json").read_text())
    assert advice == [f"- {line}" for line in doc["advice"]]
    assert doc["source"]["n_cases"] == 5 and doc["target"]["n_cases"] == 5
    assert doc["tests"]["zscored"]["flair"]["p_value"] < 0.05
    assert doc["settings"]["n_permutations"] == 200
    # the PCA, t-SNE and histogram figures the issue asks for, each a real picture
    assert {"shift_pca.png", "shift_tsne.png", "shift_histograms.png"} <= set(doc["figures"])
    import matplotlib.image as mpimg

    for name in doc["figures"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        pixels = mpimg.imread(out / name)[..., :3]
        assert min(pixels.shape[:2]) > 200, (name, pixels.shape)
        assert pixels.std() > 0.05, name  # not blank
    for name in ("shift_pca.png", "shift_tsne.png", "shift_histograms.png"):
        # both sites drawn, not only axes, text and legend: blue (source) and red (target)
        # pixels each cover more than the two legends' markers would (~0.02%)
        r, b = (mpimg.imread(out / name)[..., c] for c in (0, 2))
        assert ((b - r) > 0.2).mean() > 6e-4 and ((r - b) > 0.2).mean() > 6e-4, name
    assert not list(out.glob(".*"))  # no temporary files left behind
    bad = CliRunner().invoke(app, ["shift", "--source", str(tmp_path / "nope"), "--target",
                                   str(tgt), "-o", str(out)])
    assert bad.exit_code == 1 and "no such folder" in bad.output


def test_analyse_shift_with_stand_in_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    src = _write_cohort(tmp_path / "src", 4, rng)
    tgt = _write_cohort(tmp_path / "tgt", 4, rng, flair_skew=1.5)
    doc = analyse_shift(src, tgt, model=TinyEncoder(), n_permutations=50, patch_size=8,
                        n_patches=2).doc
    enc = doc["tests"]["encoder"]["overall"]
    assert enc["n_features"] == 8 and enc["n_source"] == 4
    assert "encoder features: MMD^2" in doc["verdict"]


def test_cli_with_a_checkpoint_on_two_sequences(tmp_path: Path) -> None:
    """``--model`` with a real card-bearing checkpoint trained on (flair, t2): the encoder sees
    those channels by name, in the card's order (not all four)."""
    from glioseg.model.card import ModelCard, save_model
    from glioseg.model.registry import ModelConfig, build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=2, base_width=4, max_width=8, n_stages=2,
                                  patch_size=(8, 8, 8)))
    ckpt = save_model(tmp_path / "m", net, ModelCard.for_model(net, modalities=("flair", "t2"),
                                                              label_scheme="brats2021"))
    rng = np.random.default_rng(2)
    src = _write_cohort(tmp_path / "src", 4, rng)
    tgt = _write_cohort(tmp_path / "tgt", 4, rng, flair_skew=1.5)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["shift", "--source", str(src), "--target", str(tgt),
                                      "-o", str(out), "--permutations", "50",
                                      "--model", str(ckpt)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "shift.json").read_text())
    # pooled features of the two encoder stages: 4 + 8 channels
    assert doc["tests"]["encoder"]["overall"]["n_features"] == 12


def _result(mmd2: float, p: float = 0.001) -> S.MMDResult:
    return S.MMDResult(mmd2=mmd2, p_value=p, bandwidth=1.0, n_permutations=999, n_source=10,
                       n_target=10, n_features=9, null_mean=0.0, null_q95=0.05)


def test_only_the_largest_shift_differs_most() -> None:
    per_seq = {"t1": _result(0.6), "t1ce": _result(0.01, 0.5), "t2": _result(0.9),
               "flair": _result(0.7)}
    _, advice = S.verdict(_result(0.8), per_seq, [])
    most = [a for a in advice if "differs most" in a]
    assert most == [next(a for a in advice if a.startswith("T2 differs most (MMD^2 = 0.900)"))]
    assert [a.split(" ")[0] for a in advice if "also shifts a lot" in a] == ["FLAIR", "T1"]
    assert not any(a.startswith("T1CE") for a in advice)


def _write_sequences(root: Path, n: int, rng: np.random.Generator, sequences=MODALITIES,
                     **kw: float) -> Path:
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    for i in range(n):
        cid = case_id_for("brats2021", i)
        img = _brain_image(rng, (12, 11, 10), **kw)
        for c, mod in enumerate(MODALITIES):
            if mod in sequences:
                save_volume(root / cid / case_file_name("brats2021", cid, mod), img[c], affine,
                            np.float32)
    return root


def test_cli_lists_the_bad_cases_of_both_cohorts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = _write_cohort(tmp_path / "src", 3, rng)
    tgt = _write_sequences(tmp_path / "tgt", 3, rng, sequences=("t2", "flair"))
    (src / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz").write_bytes(b"not a nifti")
    result = CliRunner().invoke(app, ["shift", "--source", str(src), "--target", str(tgt),
                                      "-o", str(tmp_path / "out"), "--permutations", "20"])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "4 bad cases (1 in the source, 3 in the target)" in out
    assert "source: BraTS2021_00001: " in out
    for i in range(3):
        assert f"target: BraTS2021_0000{i}: missing modality t1 " in out
    assert "--modalities t2,flair" in out


def test_a_site_with_fewer_sequences_is_compared_on_those(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = _write_cohort(tmp_path / "src", 4, rng)
    tgt = _write_sequences(tmp_path / "tgt", 4, rng, sequences=("t2", "flair"), flair_skew=1.5)
    analysis = analyse_shift(src, tgt, n_permutations=50, sequences="flair,t2")
    doc = analysis.doc
    assert analysis.sequences == ("t2", "flair") and doc["settings"]["sequences"] == ["t2", "flair"]
    assert set(doc["tests"]["zscored"]) == {"overall", "t2", "flair"}
    assert doc["tests"]["zscored"]["overall"]["n_features"] == 2 * len(QUANTILES)
    assert doc["settings"]["per_sequence_alpha"] == pytest.approx(0.05 / 2)
    assert set(doc["cases"]["target"][0]["mean"]) == {"t2", "flair"}
    assert analysis.source[0].sample.shape[0] == 2
    assert all(f["feature"].split("_")[0] in ("t2", "flair") for f in doc["feature_shifts"])
    from glioseg.report.shift_figures import draw_shift_figures

    names = draw_shift_figures(analysis, tmp_path / "figs")  # histograms of those two only
    assert (tmp_path / "figs" / "shift_histograms.png").stat().st_size > 0 and names

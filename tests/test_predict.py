"""``predict_dir`` / ``glioseg predict`` end to end on tiny NIfTI cases.

The network here is a registered 1x1x1 convolution with hand-set weights: region logit k is
``10 * zscore(channel c_k)``. Each case is built so that every modality is 1 over the brain
and 5 in one nested blob (FLAIR: whole tumour, T1ce: tumour core, T1: enhancing tumour), so
the z-scored value is positive exactly inside the blob whatever the brain's mean and std.
The expected labels are therefore known voxel by voxel on the input grid without running any
project code, and the output grid is checked against the input with nibabel directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glioseg.data.labels import MODALITIES
from glioseg.infer.predict import (
    PredictError,
    PredictOptions,
    load_model,
    predict_case,
    predict_dir,
)
from glioseg.model.card import ModelCard, save_model
from glioseg.model.registry import ModelConfig, build_model, register_model

torch.set_num_threads(1)

ARCH = "pointwise-test"
GAIN = 10.0
# region k (WT, TC, ET) reads modality SOURCE[k]
SOURCE = ("flair", "t1ce", "t1")


class Pointwise(torch.nn.Module):
    """(B, 4, x, y, z) -> (B, 3, x, y, z) by one 1x1x1 convolution; sizes multiple of 4."""

    divisor = 4
    divisors = (4, 4, 4)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.conv = torch.nn.Conv3d(cfg.in_channels, cfg.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            assert all(s % 4 == 0 for s in x.shape[2:]), x.shape  # the window honours divisor
        return self.conv(x)


register_model(ARCH, Pointwise, overwrite=True)


def save_pointwise(folder: Path, bias: tuple[float, float, float] = (0, 0, 0),
                   **card_fields) -> Path:
    cfg = ModelConfig(arch=ARCH, patch_size=(8, 8, 8))
    net = build_model(cfg)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.copy_(torch.tensor(bias))
        for k, m in enumerate(SOURCE):
            net.conv.weight[k, MODALITIES.index(m)] = GAIN
    return save_model(folder, net, ModelCard.for_model(net, label_scheme="brats2021",
                                                       **card_fields))


def oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """A rotated, translated, anisotropic voxel-to-world matrix."""
    a, b = 0.3, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = (-31.5, 12.25, -7.0)
    return aff


def _case_from_boxes(shape: tuple[int, int, int], *boxes: tuple[slice, ...]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(4, X, Y, Z)`` image and expected brats2021 labels ``(X, Y, Z)`` from four boxes:
    brain, WT, TC, ET; each region is bright (5 vs 1) in the sequence that shows it."""
    brain, wt, tc, et = (np.zeros(shape, bool) for _ in range(4))
    for mask, box in zip((brain, wt, tc, et), boxes, strict=True):
        mask[box] = True
    blob = {"flair": wt, "t1ce": tc, "t1": et, "t2": wt}
    image = np.stack([np.where(blob[m], 5.0, 1.0) * brain for m in MODALITIES]).astype(np.float32)
    expected = np.zeros(shape, np.uint8)
    expected[wt] = 2
    expected[tc] = 1
    expected[et] = 4
    return image, expected


def make_case(shape=(21, 19, 15)) -> tuple[np.ndarray, np.ndarray]:
    """``(4, X, Y, Z)`` image and the expected brats2021 labels ``(X, Y, Z)``.

    The brain box touches the x = 0 face and the y = max face; the tumour touches x = 0.
    """
    return _case_from_boxes(shape, np.s_[0:17, 3:, 2:13], np.s_[0:9, 6:15, 4:11],
                            np.s_[0:6, 8:13, 5:10], np.s_[1:4, 9:12, 6:9])


def write_case(root: Path, case_id: str, image: np.ndarray, affine: np.ndarray) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    for m, vol in zip(MODALITIES, image, strict=True):
        nib.save(nib.Nifti1Image(vol, affine), folder / f"{case_id}_{m}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pointwise(tmp_path_factory.mktemp("model") / "ckpt")


def test_output_on_the_input_grid(ckpt: Path, tmp_path: Path) -> None:
    image, expected = make_case()
    affine = oblique_affine((1.2, 0.9, 2.0))
    write_case(tmp_path / "data", "BraTS2021_00007", image, affine)
    summary = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    assert summary.predicted == ["BraTS2021_00007"] and not summary.failed
    src = nib.load(tmp_path / "data" / "BraTS2021_00007" / "BraTS2021_00007_flair.nii.gz")
    out = nib.load(tmp_path / "out" / "BraTS2021_00007.nii.gz")
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms(), src.header.get_zooms(), rtol=1e-6)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    # the header geometry as the input's: both transforms and their codes (nibabel's default
    # for a new image is sform 2 "aligned", qform 0 "unknown"; not the writer's own 1/1)
    for code in ("sform_code", "qform_code"):
        assert int(out.header[code]) == int(src.header[code]), code
    assert (int(src.header["sform_code"]), int(src.header["qform_code"])) == (2, 0)
    np.testing.assert_allclose(out.header.get_qform(), src.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_sform(), src.header.get_sform(), atol=1e-5)
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_probabilities_and_resampling_card(tmp_path: Path) -> None:
    # a model working at 1.5 mm: the case (1.2 x 0.9 x 2.0 mm) is resampled there and back.
    # The bias puts each region's boundary at the middle of the 1 -> 5 intensity step
    # (z-score of 3 over the brain), so interpolation cannot move it systematically.
    image, expected = make_case_big()
    brain = np.any(image != 0, axis=0)
    values = [image[MODALITIES.index(m)][brain].astype(np.float64) for m in SOURCE]
    bias = tuple(-GAIN * (3.0 - v.mean()) / v.std() for v in values)
    ckpt = save_pointwise(tmp_path / "m15", bias=bias, preprocessing={
        "spacing": [1.5, 1.5, 1.5], "normalisation": "zscore-brain"})
    affine = oblique_affine((1.2, 0.9, 2.0))
    write_case(tmp_path / "data", "BraTS2021_00001", image, affine)
    opts = PredictOptions(probabilities=True)
    assert predict_dir([ckpt], tmp_path / "data", tmp_path / "out", opts, progress=False).ok
    out = nib.load(tmp_path / "out" / "BraTS2021_00001.nii.gz")
    prob = nib.load(tmp_path / "out" / "BraTS2021_00001_probabilities.nii.gz")
    assert out.shape == expected.shape and prob.shape == (*expected.shape, 3)
    np.testing.assert_allclose(prob.affine, affine, atol=1e-5)
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    got = np.asarray(out.dataobj)
    probs = np.asarray(prob.dataobj)
    assert probs.min() >= 0 and probs.max() <= 1 and not probs[~brain].any()
    for k, labels in enumerate(((1, 2, 4), (1, 4), (4,))):  # WT, TC, ET
        ref = np.isin(expected, labels)
        pred = np.isin(got, labels)
        # one-voxel boundary changes of 1.5 mm resampling on boxes 5..26 voxels wide
        assert 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) > 0.95, labels
        # the probability map and the labels tell the same story for WT (no nesting union)
        if k == 0:
            assert ((probs[..., 0] > 0.5) == pred).mean() > 0.99


def make_case_big() -> tuple[np.ndarray, np.ndarray]:
    """A larger case (tumour regions a few voxels thick after 1.5 mm resampling)."""
    return _case_from_boxes((40, 44, 22), np.s_[2:38, 2:42, 1:21], np.s_[6:30, 8:34, 4:17],
                            np.s_[10:26, 12:30, 6:15], np.s_[13:23, 15:27, 8:13])


def _cohort(root: Path, n: int = 3) -> list[str]:
    image, _ = make_case()
    ids = [f"BraTS2021_{i:05d}" for i in range(n)]
    for i, cid in enumerate(ids):
        write_case(root, cid, image, oblique_affine((1.0, 1.0, 1.0 + 0.5 * i)))
    return ids


def _corrupt(root: Path, case_id: str) -> Path:
    path = root / case_id / f"{case_id}_flair.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated gzip stream
    return path


def test_bad_case_isolated_and_exit_status(ckpt: Path, tmp_path: Path) -> None:
    from glioseg.cli import app

    ids = _cohort(tmp_path / "data")
    _corrupt(tmp_path / "data", ids[1])
    result = CliRunner().invoke(app, ["predict", "--model", str(ckpt), "--input",
                                      str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert f"FAILED {ids[1]}" in result.output and "flair" in result.output
    assert "predicted 2" in result.output and "failed 1" in result.output
    assert (tmp_path / "out" / f"{ids[0]}.nii.gz").is_file()
    assert (tmp_path / "out" / f"{ids[2]}.nii.gz").is_file()
    assert not (tmp_path / "out" / f"{ids[1]}.nii.gz").exists()
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert set(record["failed"]) == {ids[1]} and record["predicted"] == [ids[0], ids[2]]


def test_cli_prefetch_gives_the_same_files_and_prints_the_rate(ckpt: Path, tmp_path: Path) -> None:
    from glioseg.cli import app

    _cohort(tmp_path / "data")
    files = {}
    for prefetch in ("0", "2"):
        out = tmp_path / f"out{prefetch}"
        result = CliRunner().invoke(app, ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                          "-o", str(out), "--prefetch", prefetch])
        assert result.exit_code == 0, result.output
        assert "predicted 3" in result.output and "cases per minute" in result.output
        assert json.loads((out / "predict.json").read_text())["options"]["prefetch"] == int(
            prefetch)
        files[prefetch] = {f.name: f.read_bytes() for f in out.glob("*.nii.gz")}
    assert len(files["0"]) == 3 and files["0"] == files["2"]
    bad = CliRunner().invoke(app, ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                   "-o", str(tmp_path / "bad"), "--prefetch", "-1"])
    assert bad.exit_code == 2 and "prefetch" in bad.output and not (tmp_path / "bad").exists()


def test_outputs_half_written_by_a_killed_run_are_removed(ckpt: Path, tmp_path: Path) -> None:
    from glioseg.io_atomic import temporary_name

    ids = _cohort(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    half = temporary_name(out / f"{ids[0]}.nii.gz")
    half.write_bytes(b"torn gzip")
    summary = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert summary.predicted == ids and not half.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_resume_skips_done_cases(ckpt: Path, tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data")
    flair = _corrupt(tmp_path / "data", ids[1])
    out = tmp_path / "out"
    first = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert first.predicted == [ids[0], ids[2]] and list(first.failed) == [ids[1]]
    stamps = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in (ids[0], ids[2])}
    # repair the bad case: a second run predicts only it and leaves the others untouched
    image, expected = make_case()
    flair.unlink()
    nib.save(nib.Nifti1Image(image[MODALITIES.index("flair")], oblique_affine((1, 1, 1.5))),
             flair)
    second = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert second.predicted == [ids[1]] and second.skipped == [ids[0], ids[2]] and second.ok
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in stamps} == stamps
    np.testing.assert_array_equal(np.asarray(nib.load(out / f"{ids[1]}.nii.gz").dataobj),
                                  expected)
    third = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert third.predicted == [] and third.skipped == ids
    forced = predict_dir([ckpt], tmp_path / "data", out, PredictOptions(overwrite=True),
                         progress=False)
    assert forced.predicted == ids
    # other settings never resume into the same folder: skipped cases would mix two results
    with pytest.raises(PredictError, match=r"other settings \(threshold 0.5 -> 0.3\)"):
        predict_dir([ckpt], tmp_path / "data", out, PredictOptions(threshold=0.3),
                    progress=False)
    other = save_pointwise(tmp_path / "other", bias=(-1.0, 0.0, 0.0))  # another model
    with pytest.raises(PredictError, match="models"):
        predict_dir([other], tmp_path / "data", out, progress=False)
    again = predict_dir([other], tmp_path / "data", out, PredictOptions(overwrite=True),
                        progress=False)
    assert again.predicted == ids
    assert json.loads((out / "predict.json").read_text())["models"] == [str(other.resolve())]


def test_missing_sequence(tmp_path: Path) -> None:
    image, expected = make_case()
    write_case(tmp_path / "data", "BraTS2021_00003", image, np.eye(4))
    (tmp_path / "data" / "BraTS2021_00003" / "BraTS2021_00003_t2.nii.gz").unlink()
    strict = save_pointwise(tmp_path / "strict")
    summary = predict_dir([strict], tmp_path / "data", tmp_path / "o1", progress=False)
    msg = summary.failed["BraTS2021_00003"]
    assert "BraTS2021_00003" in msg and "missing sequence t2" in msg
    # a card that allows a missing sequence fills it with zeros (T2 is unused by this net)
    lenient = save_pointwise(tmp_path / "lenient", preprocessing={
        "spacing": None, "normalisation": "zscore-brain", "missing_modality": "zeros"})
    assert predict_dir([lenient], tmp_path / "data", tmp_path / "o2", progress=False).ok
    got = np.asarray(nib.load(tmp_path / "o2" / "BraTS2021_00003.nii.gz").dataobj)
    np.testing.assert_array_equal(got, expected)


def test_et_rule_from_card_and_override(tmp_path: Path) -> None:
    image, expected = make_case()
    n_et = int((expected == 4).sum())
    ckpt = save_pointwise(tmp_path / "m", et_threshold=n_et + 1)
    net, card = load_model(ckpt)
    relabelled = np.where(expected == 4, 1, expected)
    got = predict_case(net, image, card=card, scheme="brats2021")
    np.testing.assert_array_equal(got, relabelled)  # ET smaller than the card's threshold
    got = predict_case(net, image, card=card, scheme="brats2020", et_min_voxels=n_et)
    np.testing.assert_array_equal(got, expected)  # the command line's threshold wins
    got = predict_case(net, image, card=card, scheme="brats2023", et_min_voxels=n_et)
    np.testing.assert_array_equal(got, np.where(expected == 4, 3, expected))


def test_ensemble_averages_probabilities(ckpt: Path) -> None:
    # two folds, WT logits z and 0.5 - z (TC, ET off); the average of their sigmoids, by hand,
    # is above 0.5 in the blob and in the rest of the brain, where each fold alone is not
    image, _ = make_case()
    folds = []
    for a, b in ((1.0, 0.0), (-1.0, 0.5)):
        net, card = load_model(ckpt)
        with torch.no_grad():
            net.conv.weight.zero_()
            net.conv.weight[0, MODALITIES.index("flair")] = a
            net.conv.bias.copy_(torch.tensor([b, -20.0, -20.0]))
        folds.append((net, card))
    brain = np.any(image != 0, axis=0)
    flair = image[MODALITIES.index("flair")].astype(np.float64)
    z = np.where(brain, (flair - flair[brain].mean()) / flair[brain].std(), 0.0)
    p1, p2 = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z - 0.5))
    p = (p1 + p2) / 2
    assert np.abs(p[brain] - 0.5).min() > 0.02  # no voxel near the threshold
    expected = np.where((p > 0.5) & brain, 2, 0)
    assert not np.array_equal(expected > 0, (p1 > 0.5) & brain)
    assert not np.array_equal(expected > 0, (p2 > 0.5) & brain)
    got = predict_case(folds, image, scheme="brats2021")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("options", [{"engine": "onnxruntime"}, {"engine": "openvino"},
                                     {"engine": "torch", "tta": True, "overlap": 0.75}])
def test_engines_and_tta_give_the_same_labels(ckpt: Path, tmp_path: Path, options) -> None:
    image, expected = make_case()
    write_case(tmp_path / "data", "BraTS2021_00005", image, oblique_affine((1, 1, 1)))
    opts = PredictOptions(batch=2, threads=1, **options)
    assert predict_dir([ckpt], tmp_path / "data", tmp_path / "out", opts, progress=False).ok
    got = np.asarray(nib.load(tmp_path / "out" / "BraTS2021_00005.nii.gz").dataobj)
    np.testing.assert_array_equal(got, expected)


def test_truncated_file_message_names_case_and_file(ckpt: Path, tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=1)
    _corrupt(tmp_path / "data", ids[0])
    summary = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    msg = summary.failed[ids[0]]
    assert msg.startswith(ids[0]) and f"{ids[0]}_flair.nii.gz" in msg


def test_output_labels_in_the_input_scheme(tmp_path: Path) -> None:
    # a card trained on BraTS 2023 files (ET = 3) predicting BraTS 2021 cases (ET = 4): the
    # outputs follow the input's convention, so `glioseg evaluate` reads them as the truth's
    net, _ = load_model(save_pointwise(tmp_path / "m"))
    ckpt = save_model(tmp_path / "m23", net, ModelCard.for_model(net, label_scheme="brats2023"))
    image, expected = make_case()
    write_case(tmp_path / "data", "BraTS2021_00002", image, oblique_affine((1, 1, 1)))
    assert predict_dir([ckpt], tmp_path / "data", tmp_path / "o1", progress=False).ok
    got = np.asarray(nib.load(tmp_path / "o1" / "BraTS2021_00002.nii.gz").dataobj)
    np.testing.assert_array_equal(got, expected)
    asked = PredictOptions(scheme="brats2023")
    assert predict_dir([ckpt], tmp_path / "data", tmp_path / "o2", asked, progress=False).ok
    got = np.asarray(nib.load(tmp_path / "o2" / "BraTS2021_00002.nii.gz").dataobj)
    np.testing.assert_array_equal(got, np.where(expected == 4, 3, expected))


def test_top_level_api_is_the_inference_api_and_loads_lazily():
    import subprocess
    import sys

    import glioseg
    from glioseg.infer import predict as P

    assert glioseg.load_model is P.load_model and glioseg.predict_case is P.predict_case
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glioseg.nope  # noqa: B018
    code = "import sys, glioseg; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_model_without_region_outputs_is_refused(tmp_path: Path) -> None:
    """A restoration (self-supervised) card is not thresholded as if it gave WT/TC/ET."""
    ckpt = save_pointwise(tmp_path / "ssl", regions=("restore_t1", "restore_t1ce",
                                                     "restore_t2"))
    image, _ = make_case()
    write_case(tmp_path / "data", "BraTS2021_00009", image, np.eye(4))
    with pytest.raises(PredictError, match="restore_t1.*fine-tune it first"):
        predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "BraTS2021_00009.nii.gz").exists()


def test_probabilities_file_holds_float16_values_in_xyz3_order(ckpt: Path, tmp_path: Path) -> None:
    """``--probabilities``: (X, Y, Z, 3) WT/TC/ET on the input grid, float32 on disk holding
    exactly the float16 rounding of the predictor's probabilities."""
    from glioseg.cli import app
    from glioseg.infer.predict import CasePredictor

    image, _ = make_case()
    spacing = (1.2, 0.9, 2.0)
    affine = oblique_affine(spacing)
    write_case(tmp_path / "data", "BraTS2021_00004", image, affine)
    result = CliRunner().invoke(app, ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                      "-o", str(tmp_path / "out"), "--probabilities"])
    assert result.exit_code == 0, result.output
    img = nib.load(tmp_path / "out" / "BraTS2021_00004_probabilities.nii.gz")
    assert img.get_data_dtype() == np.float32
    assert img.shape == (*image.shape[1:], 3)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    got = np.asarray(img.dataobj)
    assert got.dtype == np.float32
    # every value is a float16 number (rounded before writing, for a smaller gzip stream)
    np.testing.assert_array_equal(got, got.astype(np.float16).astype(np.float32))
    # exactly the float16 rounding of the probabilities the predictor computes, axes moved
    predictor = CasePredictor([load_model(ckpt)], PredictOptions())
    try:
        probs = predictor.probabilities(image, spacing)  # (3, X, Y, Z)
    finally:
        predictor.close()
    np.testing.assert_array_equal(got, np.stack([probs[k] for k in range(3)], axis=-1)
                                  .astype(np.float16).astype(np.float32))
    # and, by hand: region k = sigmoid(GAIN * z-score of SOURCE[k] over the brain), 0 outside
    # (the brain is a box, so the network's crop is the brain); float16 keeps 11 bits
    brain = np.any(image != 0, axis=0)
    expected = []
    for m in SOURCE:
        v = image[MODALITIES.index(m)].astype(np.float64)
        z = (v - v[brain].mean()) / v[brain].std()
        expected.append(np.where(brain, 1 / (1 + np.exp(-GAIN * z)), 0.0))
    for k in range(3):
        assert np.all(np.abs(got[..., k] - expected[k]) <= 2**-10 * expected[k] + 1e-7), k
    # the three channels differ, so the order WT, TC, ET is what was checked
    assert min(np.abs(expected[i] - expected[j]).max() for i, j in ((0, 1), (1, 2), (0, 2))) > 0.5


def test_resume_from_another_working_folder(tmp_path: Path, monkeypatch) -> None:
    """predict.json names the models by absolute path: the same model given relative to
    another working folder resumes; the same relative string naming another model does not."""
    ids = _cohort(tmp_path / "data", n=2)
    model = save_pointwise(tmp_path / "A" / "model")
    other = save_pointwise(tmp_path / "B" / "model", bias=(-1.0, 0.0, 0.0))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "A")
    first = predict_dir(["model"], tmp_path / "data", out, progress=False)
    assert first.predicted == ids
    assert json.loads((out / "predict.json").read_text())["models"] == [str(model.resolve())]
    monkeypatch.chdir(tmp_path / "B")
    second = predict_dir(["../A/model"], tmp_path / "data", out, progress=False)
    assert second.skipped == ids and second.predicted == [] and second.ok
    with pytest.raises(PredictError, match="models"):
        predict_dir(["model"], tmp_path / "data", out, progress=False)  # B/model: `other`
    assert other.resolve() != model.resolve()


def test_resume_is_keyed_on_the_model_not_its_path(tmp_path: Path) -> None:
    """A model folder retrained in place is another model (no resume, no mixing); the same
    model copied to another path is the same model (resumed)."""
    import shutil

    ids = _cohort(tmp_path / "data", n=2)
    model = save_pointwise(tmp_path / "runs" / "best")
    out = tmp_path / "out"
    assert predict_dir([model], tmp_path / "data", out, progress=False).predicted == ids
    shutil.copytree(model, tmp_path / "copy")
    again = predict_dir([tmp_path / "copy"], tmp_path / "data", out, progress=False)
    assert again.skipped == ids and again.predicted == [] and again.ok
    record = json.loads((out / "predict.json").read_text())
    assert len(record["model_digests"]) == 1 and len(record["model_digests"][0]) == 64
    # training updates runs/best: same path, other weights -> refused, nothing skipped
    save_pointwise(tmp_path / "runs" / "best", bias=(-1.0, 0.0, 0.0))
    with pytest.raises(PredictError, match="models .*weights or card differ"):
        predict_dir([model], tmp_path / "data", out, progress=False)
    # a changed card alone (e.g. glioseg card --et-threshold) is another model too
    card = json.loads((tmp_path / "copy" / "card.json").read_text())
    card["et_threshold"] = 3
    (tmp_path / "copy" / "card.json").write_text(json.dumps(card))
    with pytest.raises(PredictError, match="weights or card differ"):
        predict_dir([tmp_path / "copy"], tmp_path / "data", out, progress=False)


def test_overwrite_removes_the_old_output_of_a_case_that_now_fails(ckpt: Path,
                                                                  tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=2)
    out = tmp_path / "out"
    first = predict_dir([ckpt], tmp_path / "data", out, PredictOptions(probabilities=True),
                        progress=False)
    assert first.predicted == ids
    _corrupt(tmp_path / "data", ids[1])
    forced = predict_dir([ckpt], tmp_path / "data", out,
                         PredictOptions(overwrite=True, probabilities=True), progress=False)
    assert forced.predicted == [ids[0]] and list(forced.failed) == [ids[1]]
    assert (out / f"{ids[0]}.nii.gz").is_file()
    assert (out / f"{ids[0]}_probabilities.nii.gz").is_file()
    # the failed case keeps no output of the earlier run
    assert not (out / f"{ids[1]}.nii.gz").exists()
    assert not (out / f"{ids[1]}_probabilities.nii.gz").exists()


def _rewrite_case(src: Path, dst: Path, ornt: np.ndarray | None, zooms=(1.5, 2.0, 2.5)) -> None:
    """Copy a case folder's images: voxel size set to ``zooms`` (same arrays), then voxel axes
    permuted and flipped by ``ornt`` with the affine adjusted, so each voxel keeps its world
    position (same anatomy in world space)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.nii.gz")):
        if f.name.endswith("_seg.nii.gz"):
            continue
        img = nib.load(f)
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = img.affine @ np.diag([z / s for z, s in zip(zooms, img.header.get_zooms()[:3],
                                                            strict=True)] + [1.0])
        if ornt is not None:
            affine = affine @ inv_ornt_aff(ornt, data.shape)
            data = np.ascontiguousarray(apply_orientation(data, ornt))
        nib.save(nib.Nifti1Image(data, affine), dst / f.name)


def test_a_case_stored_in_another_orientation_gets_the_same_labels(
        synth_cohort: list[Path], tmp_path: Path) -> None:
    """Same anatomy stored with flipped and permuted voxel axes (as a sagittal acquisition,
    or RAS vs LPS) -> the same labels on the same anatomy, once the card records the
    training orientation; the result is written on each input's own grid."""
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    from glioseg.model.registry import preset

    case = synth_cohort[0]
    ornt = np.array([[2, -1], [0, 1], [1, -1]], dtype=float)  # x->z flipped, y->x, z->y flipped
    _rewrite_case(case, tmp_path / "a" / case.name, None)
    _rewrite_case(case, tmp_path / "b" / case.name, ornt)
    src = nib.load(next((tmp_path / "a" / case.name).glob("*_flair.nii.gz")))
    codes = nib.aff2axcodes(src.affine)
    assert codes == ("L", "P", "S")
    moved = nib.load(next((tmp_path / "b" / case.name).glob("*_flair.nii.gz")))
    assert nib.aff2axcodes(moved.affine) != codes and moved.shape != src.shape

    torch.manual_seed(3)
    net = build_model(preset("small", base_width=4, max_width=8, n_stages=2,
                             patch_size=(32, 32, 32))).eval()
    card = ModelCard.for_model(net, label_scheme="brats2021", preprocessing={
        "spacing": [2.0, 2.0, 2.0], "normalisation": "zscore-brain", "orientation": list(codes)})
    model = save_model(tmp_path / "model", net, card)
    opts = PredictOptions(overlap=0.25)
    for root in ("a", "b"):
        assert predict_dir([model], tmp_path / root, tmp_path / f"out_{root}", opts,
                           progress=False).ok
    got_a = nib.load(tmp_path / "out_a" / f"{case.name}.nii.gz")
    got_b = nib.load(tmp_path / "out_b" / f"{case.name}.nii.gz")
    np.testing.assert_allclose(got_b.affine, moved.affine, atol=1e-5)  # the input's own grid
    assert got_b.shape == moved.shape
    labels_a = np.asarray(got_a.dataobj)
    assert 100 < np.count_nonzero(labels_a) < labels_a.size // 2  # a non-trivial result
    back = ornt_transform(io_orientation(got_b.affine), io_orientation(got_a.affine))
    labels_b = apply_orientation(np.asarray(got_b.dataobj), back)
    np.testing.assert_array_equal(labels_b, labels_a)  # same labels on the same anatomy


def test_a_card_without_orientation_uses_cases_as_stored(ckpt: Path) -> None:
    """Old cards (no recorded orientation) keep the earlier behaviour: no reorientation."""
    image, expected = make_case()
    net, card = load_model(ckpt)
    assert "orientation" not in card.preprocessing
    flipped = np.diag([1.0, -1.0, 1.0, 1.0])  # any affine: ignored without an orientation
    got = predict_case(net, image, card=card, scheme="brats2021", affine=flipped)
    np.testing.assert_array_equal(got, expected)
    oriented = ModelCard.from_dict({**card.to_dict(), "preprocessing": {
        **card.preprocessing, "orientation": ["R", "A", "S"]}})
    # the pointwise net gives the same labels in any orientation: the result is turned back
    got = predict_case(net, image, card=oriented, scheme="brats2021",
                       affine=np.diag([-1.0, 1.0, 1.0, 1.0]) @ np.eye(4)[[1, 0, 2, 3]])
    np.testing.assert_array_equal(got, expected)


def _run_folder(root: Path) -> Path:
    """A training run folder as ``glioseg train`` leaves it: checkpoints, metrics, best/."""
    run = root / "run"
    save_pointwise(run / "best")
    save_pointwise(run / "last")
    (run / "last.pt").write_bytes(b"checkpoint")
    (run / "metrics.jsonl").write_text("{}\n")
    return run


@pytest.mark.parametrize("given, expected", [
    ("run", "{run} is a training run folder, not a model; pass {run}/best or {run}/last"),
    ("run/last.pt", "{run}/last.pt: a training checkpoint (what --resume reads), not a model; "
     "pass {run}/best or {run}/last"),
    ("model.onnx", "{root}/model.onnx: an exported network is not read back as a model; pass "
     "the model folder it was exported from (predict runs it in ONNX Runtime or OpenVINO "
     "itself: -m MODEL_DIR --engine onnxruntime, or --engine openvino)"),
])
def test_a_run_folder_checkpoint_or_export_given_as_the_model_says_what_to_pass(
        tmp_path: Path, given: str, expected: str) -> None:
    from glioseg.cli import app

    run = _run_folder(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    _cohort(tmp_path / "data", n=1)
    result = CliRunner().invoke(app, ["predict", "-m", str(tmp_path / given), "-i",
                                      str(tmp_path / "data"), "-o", str(tmp_path / "out"),
                                      "--engine", "onnxruntime"])
    assert result.exit_code == 1
    assert result.stderr.strip() == expected.format(run=run, root=tmp_path), result.stderr
    assert not (tmp_path / "out").exists()
    export = CliRunner().invoke(app, ["export", "-m", str(tmp_path / given), "-o",
                                      str(tmp_path / "x.onnx")])
    assert export.exit_code == 1 and export.stderr.strip() == expected.format(
        run=run, root=tmp_path)


def test_a_run_folder_before_its_first_model_is_named_as_such(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(PredictError, match="training run folder with no saved model yet"):
        load_model(run)


def test_an_ensemble_of_models_with_other_inputs_names_both_and_the_difference(
        ckpt: Path, tmp_path: Path) -> None:
    other = save_pointwise(tmp_path / "other", preprocessing={"spacing": [2.0, 2.0, 2.0]})
    _cohort(tmp_path / "data", n=1)
    with pytest.raises(PredictError) as info:
        predict_dir([ckpt, other], tmp_path / "data", tmp_path / "out", progress=False)
    assert str(info.value) == (
        f"{ckpt} and {other} were trained on different inputs (spacing original grid vs "
        "2x2x2 mm); an ensemble needs the same inputs: predict with each model on its own")
    assert not (tmp_path / "out").exists()  # refused before predict.json is written


def test_an_input_that_is_a_file_names_the_folder_to_give(ckpt: Path, tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=1)
    nifti = tmp_path / "data" / ids[0] / f"{ids[0]}_t1.nii.gz"
    with pytest.raises(PredictError, match=f"{nifti} is a file; --input takes a data folder "
                       f"or one case folder \\(e.g. {tmp_path / 'data' / ids[0]}"):
        predict_dir([ckpt], nifti, tmp_path / "out", progress=False)


def test_a_failed_case_is_named_once(ckpt: Path, tmp_path: Path) -> None:
    from glioseg.cli import app

    ids = _cohort(tmp_path / "data", n=2)
    (tmp_path / "data" / ids[0] / f"{ids[0]}_t2.nii.gz").unlink()
    result = CliRunner().invoke(app, ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert failed == [f"FAILED {ids[0]}: missing sequence t2 (no {ids[0]}_t2.nii[.gz] in "
                      f"{tmp_path / 'data' / ids[0]}); the model needs t1, t1ce, t2, flair "
                      "and its card does not allow a missing sequence"], result.stderr


def test_a_rerun_that_skips_every_case_keeps_the_record_of_what_was_predicted(
        ckpt: Path, tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=3)
    out = tmp_path / "out"
    predict_dir([ckpt], tmp_path / "data", out, progress=False)
    (out / f"{ids[1]}.nii.gz").unlink()
    predict_dir([ckpt], tmp_path / "data", out, progress=False)  # predicts ids[1] only
    record = json.loads((out / "predict.json").read_text())
    assert record["predicted"] == [ids[0], ids[2], ids[1]] and set(record["seconds"]) == set(ids)
    again = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert again.predicted == [] and again.skipped == ids
    record = json.loads((out / "predict.json").read_text())
    assert record["predicted"] == [ids[0], ids[2], ids[1]] and record["skipped"] == ids
    assert set(record["seconds"]) == set(ids)


def test_ctrl_c_records_the_cases_written_and_says_how_to_go_on(ckpt: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    from glioseg.cli import app
    from glioseg.infer.predict import CasePredictor

    ids = _cohort(tmp_path / "data", n=3)
    out = tmp_path / "out"
    run, calls = CasePredictor.run, []

    def interrupted_at_the_second_case(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(self, *args, **kwargs)

    monkeypatch.setattr(CasePredictor, "run", interrupted_at_the_second_case)
    result = CliRunner().invoke(app, ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                      "-o", str(out)])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        f"interrupted: 1 case(s) predicted in {out} (its predict.json lists them); run the "
        "same command again to go on (finished cases are skipped)")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{ids[0]}.nii.gz"]
    assert json.loads((out / "predict.json").read_text())["predicted"] == [ids[0]]
    monkeypatch.setattr(CasePredictor, "run", run)
    again = predict_dir([ckpt], tmp_path / "data", out, progress=False)
    assert again.skipped == [ids[0]] and again.predicted == ids[1:]

"""Preprocessing: pure crop / z-score / resample / restore, and the on-disk cache.

References are independent: bounding boxes and statistics by hand or with numpy directly,
resampling against ``scipy.ndimage.zoom(grid_mode=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from glioseg.data.cases import case_file_name
from glioseg.data.labels import MODALITIES
from glioseg.data.nifti import save_volume
from glioseg.preprocess import cache as C
from glioseg.preprocess import pure as P
from glioseg.preprocess.run import PreprocessFailed, preprocess_dir

LAYOUT = "brats2021"


def _ball(shape, centre, radius, spacing=1.0) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64) * spacing
    c = np.asarray(centre, dtype=np.float64).reshape(3, 1, 1, 1) * spacing
    return ((grid - c) ** 2).sum(0) <= radius**2


def make_arrays(shape=(30, 34, 26), seed=0, border=False, tumour_r=7.0):
    """(image (4, X, Y, Z) float32, labels (X, Y, Z) uint8 internal): a brain ball with a
    tumour of necrosis inside ET inside edema; ``border`` lets the brain touch x = 0 and y = Y."""
    rng = np.random.default_rng(seed)
    centre = np.array(shape) / 2 - 0.5
    if border:
        centre = centre + np.array([-shape[0] / 3, shape[1] / 3, 0])
    brain = _ball(shape, centre, min(shape) / 2 - 2)
    image = np.zeros((4, *shape), np.float32)
    for c in range(4):
        image[c][brain] = rng.normal(100 + 50 * c, 10 + 3 * c, brain.sum())
    tc = np.array(shape) / 2 - 0.5 + (0 if not border else np.array([-3, 3, 0]))
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, tc, tumour_r) & brain] = 2
    labels[_ball(shape, tc, tumour_r * 0.7) & brain] = 3
    labels[_ball(shape, tc, tumour_r * 0.4) & brain] = 1
    return image, labels


def write_case_files(root: Path, cid: str, image, labels, spacing=1.0) -> Path:
    """One case in the BraTS 2021 layout (file label 4 = ET)."""
    folder = root / cid
    affine = np.diag([spacing, spacing, spacing, 1.0])
    for c, mod in enumerate(MODALITIES):
        save_volume(folder / case_file_name(LAYOUT, cid, mod), image[c], affine, np.float32)
    if labels is not None:
        seg = np.where(labels == 3, 4, labels).astype(np.uint8)
        save_volume(folder / case_file_name(LAYOUT, cid, "seg"), seg, affine, np.uint8)
    return folder


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------- pure functions


def test_bounding_box_by_hand():
    mask = np.zeros((10, 8, 6), bool)
    mask[2, 3, 1] = mask[7, 5, 4] = True
    assert P.bounding_box(mask) == [[2, 8], [3, 6], [1, 5]]
    with pytest.raises(P.PreprocessError, match="no brain voxels"):
        P.bounding_box(np.zeros((3, 3, 3), bool))


def test_zscore_mean0_std1_inside_brain_zero_outside():
    image, labels = make_arrays()
    out, _, geo = P.preprocess_arrays(image, labels, 1.0)
    brain = np.any(image != 0, axis=0)
    (x0, x1), (y0, y1), (z0, z1) = geo["bbox"]
    mask = brain[x0:x1, y0:y1, z0:z1]
    assert out.dtype == np.float32 and out.shape == (4, *mask.shape)
    assert not brain[:x0].any() and not brain[x1:].any()  # bbox contains the whole brain
    for c in range(4):
        inside = out[c][mask].astype(np.float64)
        assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-4
        assert np.all(out[c][~mask] == 0)
        vals = image[c][brain].astype(np.float64)
        assert geo["zscore"][c] == pytest.approx([vals.mean(), vals.std()], rel=1e-6)


def test_round_trip_without_resampling_is_exact():
    image, labels = make_arrays()
    out, lab, geo = P.preprocess_arrays(image, labels, 1.0)
    assert lab.shape == out.shape[1:] == tuple(geo["shape"]) == tuple(geo["cropped_shape"])
    json.dumps(geo)  # JSON-able
    restored = P.restore_to_original(lab, geo, order=0)
    assert restored.dtype == np.uint8 and np.array_equal(restored, labels)
    probs = np.stack([lab == k for k in range(4)]).astype(np.float32)
    back = P.restore_to_original(probs, geo, order=1)
    assert back.shape == (4, *labels.shape)
    for k in (1, 2, 3):
        assert np.array_equal(back[k] > 0.5, labels == k)


def test_bbox_touching_the_border():
    image, labels = make_arrays(border=True)
    _, lab, geo = P.preprocess_arrays(image, labels, 1.0)
    assert geo["bbox"][0][0] == 0 and geo["bbox"][1][1] == image.shape[2]
    assert np.array_equal(P.restore_to_original(lab, geo, order=0), labels)


def test_resampling_2mm_round_trip_dice():
    # whole tumour of 24 mL (radius 18 mm); BraTS tumours are mostly larger
    image, labels = make_arrays(shape=(64, 64, 56), tumour_r=18.0)
    out, lab, geo = P.preprocess_arrays(image, labels, 1.0, 2.0)
    assert geo["spacing"] == [2.0, 2.0, 2.0]
    assert tuple(geo["shape"]) == tuple(int(round(n / 2)) for n in geo["cropped_shape"])
    assert out.shape == (4, *geo["shape"]) and lab.shape == tuple(geo["shape"])
    nearest = P.restore_to_original(lab, geo, order=0)
    linear = P.restore_to_original(lab, geo, order=1)
    probs = np.stack([lab == k for k in range(4)]).astype(np.float32)
    from_probs = P.restore_to_original(probs, geo, order=1).argmax(0)
    for restored in (nearest, linear, from_probs):
        assert restored.shape == labels.shape
        assert dice(restored > 0, labels > 0) > 0.95
        assert dice(restored == 2, labels == 2) > 0.9
        assert dice(np.isin(restored, (1, 3)), np.isin(labels, (1, 3))) > 0.9
    assert np.array_equal(linear, from_probs)  # one-hot linear restore of labels == of probs
    # outside the brain stays exactly 0 after cubic interpolation
    brain_r = P.resample_labels(P.crop(np.any(image != 0, 0), geo["bbox"]).astype(np.uint8),
                                geo["shape"], n_labels=2)
    assert np.all(out[:, brain_r == 0] == 0)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_matches_scipy_zoom(order):
    a = np.random.default_rng(1).random((10, 12, 7)).astype(np.float32)
    shape = (5, 18, 4)
    ref = ndimage.zoom(a, np.divide(shape, a.shape), order=order, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(P.resample_to_shape(a, shape, order), ref, atol=1e-6)


def test_resample_labels_one_hot_keeps_majority_by_hand():
    # 4x1x1 -> 2x1x1: each output voxel averages two inputs; ties go to the lower label.
    lab = np.array([1, 1, 0, 3], np.uint8).reshape(4, 1, 1)
    assert P.resample_labels(lab, (2, 1, 1)).ravel().tolist() == [1, 0]


# ---------------------------------------------------------------- the cache on disk


@pytest.fixture()
def two_cases(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for i in range(2):
        image, labels = make_arrays(shape=(20, 22, 18), seed=i, tumour_r=4.0)
        write_case_files(data, f"BraTS2021_0000{i}", image, labels)
    return data


def test_cache_contents_and_open_cache(two_cases: Path, tmp_path: Path):
    out = tmp_path / "cache"
    ids = preprocess_dir(two_cases, out)
    assert ids == ["BraTS2021_00000", "BraTS2021_00001"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["format"] == "glioseg-cache/1" and info["spacing"] is None
    assert info["cases"] == ids and info["modalities"] == ["t1", "t1ce", "t2", "flair"]
    cases = C.open_cache(out)
    image, labels = make_arrays(shape=(20, 22, 18), seed=0, tumour_r=4.0)
    ref_img, ref_lab, geo = P.preprocess_arrays(image, labels, 1.0)
    c = cases[0]
    assert isinstance(c.image, np.memmap) and c.image.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(c.image), ref_img)
    np.testing.assert_array_equal(np.asarray(c.labels), ref_lab)
    assert c.meta["bbox"] == geo["bbox"] and c.meta["original_affine"][0][0] == 1.0
    for k in (1, 2, 3):
        loc = c.locations[k]
        assert loc.dtype == np.int32 and loc.shape[1] == 3
        assert len(loc) == (ref_lab == k).sum() > 0
        assert np.all(ref_lab[tuple(loc.T)] == k)


def test_sample_locations_caps_per_label():
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[:20] = 2
    loc = C.sample_locations(lab, np.random.default_rng(0), max_per_label=100)
    assert loc["2"].shape == (100, 3) and len(np.unique(loc["2"], axis=0)) == 100
    assert loc["1"].shape == (0, 3) and np.all(lab[tuple(loc["2"].T)] == 2)


def test_open_cache_rejects_non_cache(tmp_path: Path):
    with pytest.raises(C.CacheError, match="not a glioseg cache"):
        C.open_cache(tmp_path)
    (tmp_path / "dataset.json").write_text('{"format": "other"}')
    with pytest.raises(C.CacheError, match="format"):
        C.open_cache(tmp_path)


def test_open_cache_rejects_wrong_shape(two_cases: Path, tmp_path: Path):
    out = tmp_path / "cache"
    preprocess_dir(two_cases, out)
    meta_path = out / "BraTS2021_00001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [1, 2, 3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(C.CacheError, match="BraTS2021_00001.*image.npy"):
        C.open_cache(out)


def test_rerun_skips_finished_cases(two_cases: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "cache"
    preprocess_dir(two_cases, out)
    stamp = (out / "BraTS2021_00000" / "image.npy").stat().st_mtime_ns
    import glioseg.preprocess.run as R

    def boom(*args, **kwargs):
        raise AssertionError("a finished case was preprocessed again")

    monkeypatch.setattr(R, "preprocess_case", boom)
    assert preprocess_dir(two_cases, out) == ["BraTS2021_00000", "BraTS2021_00001"]
    assert (out / "BraTS2021_00000" / "image.npy").stat().st_mtime_ns == stamp


def test_interrupted_write_leaves_no_case(two_cases: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "cache"
    (out / ".BraTS2021_00000.tmp-stale").mkdir(parents=True)  # left by a killed run

    def crash(*args, **kwargs):  # raised after image.npy and labels.npy are written
        raise RuntimeError("disk full")

    monkeypatch.setattr(C, "sample_locations", crash)
    with pytest.raises(PreprocessFailed, match="BraTS2021_00000.*disk full"):
        preprocess_dir(two_cases, out)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "preprocess.json"]
    assert json.loads((out / "dataset.json").read_text())["cases"] == []
    monkeypatch.undo()
    assert len(preprocess_dir(two_cases, out)) == 2


def test_bad_case_is_isolated(two_cases: Path, tmp_path: Path):
    bad = two_cases / "BraTS2021_00001" / case_file_name(LAYOUT, "BraTS2021_00001", "t2")
    bad.write_bytes(b"not a nifti file")
    out = tmp_path / "cache"
    with pytest.raises(PreprocessFailed, match=r"1 of 2 cases failed[\s\S]*BraTS2021_00001"):
        preprocess_dir(two_cases, out)
    assert [c.case_id for c in C.open_cache(out)] == ["BraTS2021_00000"]
    assert not (out / "BraTS2021_00001").exists()


def test_parallel_workers_and_resampling(two_cases: Path, tmp_path: Path):
    out = tmp_path / "cache2"
    preprocess_dir(two_cases, out, spacing=2.0, workers=2)
    cases = C.open_cache(out)
    assert len(cases) == 2
    for c in cases:
        assert c.meta["spacing"] == [2.0] * 3
        assert list(c.image.shape[1:]) == c.meta["shape"]
        assert c.meta["shape"] == [int(round(n / 2)) for n in c.meta["cropped_shape"]]
    with pytest.raises(C.CacheError, match="spacing"):
        preprocess_dir(two_cases, out, spacing=None)
    # killed before dataset.json was written: the finished cases still fix the settings
    (out / "dataset.json").unlink()
    with pytest.raises(C.CacheError, match="spacing"):
        preprocess_dir(two_cases, out, spacing=None)
    with pytest.raises(C.CacheError, match="sequences"):
        preprocess_dir(two_cases, out, spacing=2.0, modalities="t2,t1")
    assert len(preprocess_dir(two_cases, out, spacing=2.0)) == 2


def test_other_source_is_refused_unless_added(two_cases: Path, tmp_path: Path, capsys):
    other = tmp_path / "other"
    image, labels = make_arrays(shape=(20, 22, 18), seed=5, tumour_r=4.0)
    write_case_files(other, "BraTS2021_00007", image, labels)
    out = tmp_path / "cache"
    preprocess_dir(two_cases, out)
    with pytest.raises(C.CacheError, match=rf"built from {two_cases.resolve()}, not "
                                           rf"{other.resolve()};.*another output.*--add"):
        preprocess_dir(other, out)
    assert json.loads((out / "dataset.json").read_text())["cases"] == [
        "BraTS2021_00000", "BraTS2021_00001"]
    both = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00007"]
    assert preprocess_dir(other, out, add=True) == both
    assert "holds 3 cases: 2 from" in capsys.readouterr().err
    info = json.loads((out / "dataset.json").read_text())
    assert info["sources"] == [str(two_cases.resolve()), str(other.resolve())]
    assert [c.case_id for c in C.open_cache(out)] == both
    # re-runs from either folder skip the finished cases and keep the list and its order
    assert preprocess_dir(two_cases, out) == both and preprocess_dir(other, out) == both
    # a case id the cache holds from another folder is refused, not skipped as done
    clash = tmp_path / "clash"
    write_case_files(clash, "BraTS2021_00001", image, labels)
    with pytest.raises(C.CacheError, match="1 case ids.*already in the cache.*BraTS2021_00001"):
        preprocess_dir(clash, out, add=True)


def test_other_source_is_refused_for_a_cache_written_before_sources(two_cases: Path,
                                                                    tmp_path: Path):
    out = tmp_path / "cache"
    preprocess_dir(two_cases, out)
    for path in [out / "preprocess.json", out / "dataset.json", *out.glob("*/meta.json")]:
        doc = json.loads(path.read_text())
        doc.pop("sources", None)
        if path.parent != out:
            doc.pop("source")
        path.write_text(json.dumps(doc))
    other = tmp_path / "other"
    write_case_files(other, "BraTS2021_00003", *make_arrays(shape=(20, 22, 18), tumour_r=4.0))
    with pytest.raises(C.CacheError, match="built from"):
        preprocess_dir(other, out)
    assert len(preprocess_dir(two_cases, out)) == 2


def test_cache_round_trip_to_the_original_files(synth_cohort: list[Path], tmp_path: Path):
    """A synthetic case through the cache on disk and back onto its original grid: labels
    exactly, voxels after undoing the recorded z-score; files read with nibabel directly."""
    import nibabel as nib

    folder = synth_cohort[0]
    cid = folder.name
    preprocess_dir(folder, tmp_path / "cache")
    (case,) = C.open_cache(tmp_path / "cache")
    meta = case.meta
    seg = np.asanyarray(nib.load(folder / case_file_name(LAYOUT, cid, "seg")).dataobj)
    back = P.restore_to_original(np.asarray(case.labels), meta, order=0)
    assert back.shape == seg.shape
    np.testing.assert_array_equal(back, np.where(seg == 4, 3, seg))  # BraTS 2021: 4 is ET
    vols = [np.asanyarray(nib.load(folder / case_file_name(LAYOUT, cid, m)).dataobj)
            .astype(np.float64) for m in MODALITIES]
    brain = np.any(np.stack(vols) != 0, axis=0)
    restored = P.restore_to_original(np.asarray(case.image), meta, order=0)
    for c, vol in enumerate(vols):
        mean, std = meta["zscore"][c]
        undone = np.where(brain, restored[c].astype(np.float64) * std + mean, 0.0)
        np.testing.assert_allclose(undone, vol, atol=1e-3 * std)


def test_declared_labels_give_the_cache_of_the_0124_files(two_cases: Path, tmp_path: Path):
    """The same volumes with the 2021 names and nnU-Net's 0/1/2/3 labels: refused with a hint
    naming --labels (nothing cached, so the same output may be re-run); with --labels brats2023
    the cache equals that of the 0/1/2/4 files; a re-run with another --labels is refused, as
    is one without."""
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.data.nifti import load_volume

    nn = tmp_path / "nn"
    for src in sorted(two_cases.iterdir()):
        seg_name = case_file_name(LAYOUT, src.name, "seg")
        for f in src.iterdir():
            (nn / src.name).mkdir(parents=True, exist_ok=True)
            (nn / src.name / f.name).write_bytes(f.read_bytes())
        seg, header = load_volume(src / seg_name, dtype=None)
        save_volume(nn / src.name / seg_name, np.where(seg == 4, 3, seg), header.affine,
                    np.uint8)
    std, out = tmp_path / "std", tmp_path / "cache"
    preprocess_dir(two_cases, std)
    with pytest.raises(PreprocessFailed, match=r"labels \[3\] are not allowed in the brats2021 "
                                               r"scheme.*or declare the scheme: --labels "
                                               r"brats2023"):
        preprocess_dir(nn, out)
    runner = CliRunner()
    res = runner.invoke(app, ["preprocess", str(nn), "-o", str(out), "--labels", "brats2023"])
    assert res.exit_code == 0, res.output
    for cid in ("BraTS2021_00000", "BraTS2021_00001"):
        for name in ("labels.npy", "image.npy"):
            assert (out / cid / name).read_bytes() == (std / cid / name).read_bytes(), name
        meta = json.loads((out / cid / "meta.json").read_text())
        assert meta["layout"] == "brats2021" and meta["label_scheme"] == "brats2023"
    assert json.loads((out / "dataset.json").read_text())["labels"] == "brats2023"
    assert json.loads((out / "preprocess.json").read_text())["labels"] == "brats2023"
    assert json.loads((std / "dataset.json").read_text())["labels"] is None
    other = runner.invoke(app, ["preprocess", str(nn), "-o", str(out), "--labels", "brats2021"])
    assert other.exit_code == 1
    assert (f"{out}: cache was built with --labels brats2023, not with --labels brats2021; "
            "pass the same --labels") in " ".join(other.output.split())
    with pytest.raises(C.CacheError, match="built with --labels brats2023, not without "
                                           "--labels"):
        preprocess_dir(nn, out)
    assert len(preprocess_dir(nn, out, label_scheme="brats2023")) == 2  # the same: a re-run


def test_a_cache_written_before_labels_were_recorded_reruns_without_them(two_cases: Path,
                                                                         tmp_path: Path):
    out = tmp_path / "cache"
    preprocess_dir(two_cases, out)
    for name in ("dataset.json", "preprocess.json"):
        doc = json.loads((out / name).read_text())
        del doc["labels"]
        (out / name).write_text(json.dumps(doc))
    assert len(preprocess_dir(two_cases, out)) == 2
    with pytest.raises(C.CacheError, match="built without --labels .*, not with --labels "
                                           "brats2023"):
        preprocess_dir(two_cases, out, label_scheme="brats2023")

"""bench/fault_compare.py: the comparisons ``glioseg bench faults`` rests on catch a changed
voxel, value or weight and a missing file."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import AFFINE

from glioseg.bench import fault_compare as FC
from glioseg.data.nifti import save_volume
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as PC


def test_compare_arrays_bit_for_bit():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert FC.compare_arrays(a, a.copy(), "x") == []
    b = a.copy()
    b[1, 2, 3] = np.nextafter(b[1, 2, 3], np.float32(np.inf))  # one ulp
    (diff,) = FC.compare_arrays(a, b, "x")
    assert "1 of 24 values differ" in diff
    assert "dtype" in FC.compare_arrays(a, a.astype(np.float64), "x")[0]
    assert "shape" in FC.compare_arrays(a, a.reshape(4, 3, 2), "x")[0]
    nan = np.array([np.nan, 1.0])
    assert FC.compare_arrays(nan, nan.copy(), "x") == []  # same bits


def _cache(folder: Path, voxel: float = 0.0) -> Path:
    image = np.zeros((4, 5, 6, 7), np.float32)
    image[0, 1, 2, 3] = voxel
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[2, 2, 2] = 2
    PC.write_case(folder, "C0", image, labels, {"case_id": "C0", "layout": "brats2023"})
    write_json(folder / "dataset.json", {"cases": ["C0"]})
    return folder


def test_compare_cache_finds_one_voxel_and_a_missing_file(tmp_path: Path):
    ref = _cache(tmp_path / "ref")
    assert FC.compare_cache(ref, _cache(tmp_path / "same")) == []
    diffs = FC.compare_cache(ref, _cache(tmp_path / "other", voxel=1e-6))
    assert diffs == ["C0/image.npy: 1 of 840 values differ (max abs diff 9.999999974752427e-07)"]
    gone = _cache(tmp_path / "gone")
    (gone / "C0" / "locations.npz").unlink()
    assert FC.compare_cache(ref, gone) == ["C0/locations.npz: missing"]
    meta = _cache(tmp_path / "meta")
    write_json(meta / "dataset.json", {"cases": ["C1"]})
    assert FC.compare_cache(ref, meta) == ["dataset.json.cases: ['C1'] != ['C0']"]


def test_compare_predictions_finds_one_voxel(tmp_path: Path):
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[2:4, 2:4, 2:4] = 2
    for name in ("ref", "same", "other"):
        save_volume(tmp_path / name / "A.nii.gz", labels, AFFINE, np.uint8)
    other = labels.copy()
    other[0, 0, 0] = 3
    save_volume(tmp_path / "other" / "A.nii.gz", other, AFFINE, np.uint8)
    assert FC.compare_predictions(tmp_path / "ref", tmp_path / "same") == []
    assert FC.compare_predictions(tmp_path / "ref", tmp_path / "other") == [
        "A.nii.gz: 1 of 216 values differ (max abs diff 3.0)"]
    # a hidden temporary is not a prediction
    save_volume(tmp_path / "same" / ".A.nii.gz.0a1b.tmp.nii.gz", other, AFFINE, np.uint8)
    assert FC.compare_predictions(tmp_path / "ref", tmp_path / "same") == []


def _evaluation(folder: Path, dice: float, unmatched: list[str]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "per_case.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "WT_dice", "WT_hd95"])
        w.writerow(["A", dice, "nan"])
    (folder / "summary.json").write_text(json.dumps(
        {"metrics": {"dice": {"WT": {"mean": dice}}}, "unmatched_predictions": unmatched,
         "hd": math.nan}))
    return folder


def test_compare_evaluation_finds_a_value_and_a_list(tmp_path: Path):
    ref = _evaluation(tmp_path / "ref", 0.5, [])
    assert FC.compare_evaluation(ref, _evaluation(tmp_path / "same", 0.5, [])) == []  # nan==nan
    diffs = FC.compare_evaluation(ref, _evaluation(tmp_path / "dice", 0.5000001, []))
    assert diffs == ["per_case.csv row 1.WT_dice: 0.5000001 != 0.5",
                     "summary.json.metrics.dice.WT.mean: 0.5000001 != 0.5"]
    diffs = FC.compare_evaluation(ref, _evaluation(tmp_path / "list", 0.5, [".A.tmp.nii.gz"]))
    assert diffs == ["summary.json.unmatched_predictions: ['.A.tmp.nii.gz'] != []"]


def test_compare_state_dicts_finds_one_weight():
    ref = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    same = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    assert FC.compare_state_dicts(ref, same, "m") == (0.0, [])
    other = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    other["w"][1, 1] += 1e-6
    worst, diffs = FC.compare_state_dicts(ref, other, "m")
    assert worst == pytest.approx(1e-6, rel=0.2) and diffs == ["m.w: max abs diff 9.54e-07"]
    other["opt"]["state"][0]["exp_avg"][0] = 1.0
    assert len(FC.compare_state_dicts(ref, other, "m")[1]) == 2

"""``glioseg bench faults``: a reduced run (preprocess killed at every moment) recovers
identically, and the checks it rests on catch what they are for: a changed voxel, value or
weight, a missing file, a half-written file."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import AFFINE
from typer.testing import CliRunner

from glioseg.bench import faults as BF
from glioseg.cli import app
from glioseg.data.nifti import save_volume
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as PC


def test_preprocess_killed_at_every_moment_recovers_identically(tmp_path: Path, capsys):
    results = BF.bench_faults(["preprocess"], BF.MOMENTS, work=tmp_path, show_progress=False)
    assert [r.moment for r in results] == list(BF.MOMENTS)
    # The early and middle moments are fractions of the uninterrupted run's wall time, which a
    # loaded or fast machine can miss (the bench then says "not killed"); the write moment is
    # triggered by the temporary file itself and must always be caught.
    killed = [r for r in results if r.killed]
    for r in killed:
        assert r.rerun_rc == 0, (r.moment, r.notes)
        assert r.half_written == [] and r.differences == [], r
        assert r.outcome == BF.IDENTICAL
    write = results[-1]
    assert write.killed and "writing ." in write.at_kill  # a temporary beside a whole case
    out = capsys.readouterr().out
    assert out.count(BF.IDENTICAL) >= len(killed)
    # what was compared: the recovered cache holds every case of the reference's
    got = tmp_path / "faults" / "preprocess-write"
    assert len(PC.open_cache(got)) == BF.CASES


def test_unknown_stage_is_refused():
    res = CliRunner().invoke(app, ["bench", "faults", "--stages", "inference"])
    assert res.exit_code == 1 and "inference" in res.output


# --------------------------------------------------------------------------- comparisons

def test_compare_arrays_bit_for_bit():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert BF.compare_arrays(a, a.copy(), "x") == []
    b = a.copy()
    b[1, 2, 3] = np.nextafter(b[1, 2, 3], np.float32(np.inf))  # one ulp
    (diff,) = BF.compare_arrays(a, b, "x")
    assert "1 of 24 values differ" in diff
    assert "dtype" in BF.compare_arrays(a, a.astype(np.float64), "x")[0]
    assert "shape" in BF.compare_arrays(a, a.reshape(4, 3, 2), "x")[0]
    nan = np.array([np.nan, 1.0])
    assert BF.compare_arrays(nan, nan.copy(), "x") == []  # same bits


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
    assert BF.compare_cache(ref, _cache(tmp_path / "same")) == []
    diffs = BF.compare_cache(ref, _cache(tmp_path / "other", voxel=1e-6))
    assert diffs == ["C0/image.npy: 1 of 840 values differ (max abs diff 9.999999974752427e-07)"]
    gone = _cache(tmp_path / "gone")
    (gone / "C0" / "locations.npz").unlink()
    assert BF.compare_cache(ref, gone) == ["C0/locations.npz: missing"]
    meta = _cache(tmp_path / "meta")
    write_json(meta / "dataset.json", {"cases": ["C1"]})
    assert BF.compare_cache(ref, meta) == ["dataset.json.cases: ['C1'] != ['C0']"]


def test_compare_predictions_finds_one_voxel(tmp_path: Path):
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[2:4, 2:4, 2:4] = 2
    for name in ("ref", "same", "other"):
        save_volume(tmp_path / name / "A.nii.gz", labels, AFFINE, np.uint8)
    other = labels.copy()
    other[0, 0, 0] = 3
    save_volume(tmp_path / "other" / "A.nii.gz", other, AFFINE, np.uint8)
    assert BF.compare_predictions(tmp_path / "ref", tmp_path / "same") == []
    assert BF.compare_predictions(tmp_path / "ref", tmp_path / "other") == [
        "A.nii.gz: 1 of 216 values differ (max abs diff 3.0)"]
    # a hidden temporary is not a prediction
    save_volume(tmp_path / "same" / ".A.nii.gz.0a1b.tmp.nii.gz", other, AFFINE, np.uint8)
    assert BF.compare_predictions(tmp_path / "ref", tmp_path / "same") == []


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
    assert BF.compare_evaluation(ref, _evaluation(tmp_path / "same", 0.5, [])) == []  # nan==nan
    diffs = BF.compare_evaluation(ref, _evaluation(tmp_path / "dice", 0.5000001, []))
    assert diffs == ["per_case.csv row 1.WT_dice: 0.5000001 != 0.5",
                     "summary.json.metrics.dice.WT.mean: 0.5000001 != 0.5"]
    diffs = BF.compare_evaluation(ref, _evaluation(tmp_path / "list", 0.5, [".A.tmp.nii.gz"]))
    assert diffs == ["summary.json.unmatched_predictions: ['.A.tmp.nii.gz'] != []"]


def test_compare_state_dicts_finds_one_weight():
    ref = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    same = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    assert BF.compare_state_dicts(ref, same, "m") == (0.0, [])
    other = {"w": torch.ones(3, 3), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    other["w"][1, 1] += 1e-6
    worst, diffs = BF.compare_state_dicts(ref, other, "m")
    assert worst == pytest.approx(1e-6, rel=0.2) and diffs == ["m.w: max abs diff 9.54e-07"]
    other["opt"]["state"][0]["exp_avg"][0] = 1.0
    assert len(BF.compare_state_dicts(ref, other, "m")[1]) == 2


# --------------------------------------------------------------------------- half-written files

def test_half_written_files_are_found(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "a.npy", np.arange(1000, dtype=np.float32))
    (out / "b.json").write_text('{"x": 1}')
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    save_volume(out / "c.nii.gz", np.ones((8, 8, 8), np.uint8), AFFINE, np.uint8)
    (out / ".a.npy.0a1b.tmp.npy").write_bytes(b"\x93NUMPY")  # hidden: a temporary
    assert BF.half_written(out) == []
    assert BF.walk_outputs(out)[1] == [Path(".a.npy.0a1b.tmp.npy")]
    for name in ("a.npy", "b.json", "c.nii.gz"):  # cut each in half
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')
    (out / "d.json").write_text("")
    found = BF.half_written(out)
    assert [f.split(":")[0] for f in found] == ["a.npy", "b.json", "c.nii.gz", "d.json",
                                                "metrics.jsonl"]
    # a torn last line of an appended log is the documented exception (dropped on resume)
    assert [f.split(":")[0] for f in BF.half_written(out, allow_torn_tail=True)] == [
        "a.npy", "b.json", "c.nii.gz", "d.json"]


def test_outcome_of_a_fault():
    r = BF.FaultResult("train", "write", killed=True, rerun_rc=0)
    assert r.outcome == BF.IDENTICAL and r.ok
    assert "not killed" in BF.FaultResult("train", "write").outcome
    assert "half-written" in BF.FaultResult("t", "w", killed=True, half_written=["x"]).outcome
    assert "exit 1" in BF.FaultResult("t", "w", killed=True, rerun_rc=1).outcome
    r.differences = ["last.pt model.w: max abs diff 1e-07"]
    assert r.outcome == "recovered, differs (1 difference(s))" and not r.ok
    table = BF.format_table([r])
    assert "train" in table and "recovered, differs" in table

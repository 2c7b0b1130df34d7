"""evaluate_folder and ``glioseg evaluate`` on tiny BraTS folders, values worked out by hand
(and with medpy where a hand count would be long)."""

import csv
import json
import math

import numpy as np
import pytest
from datafiles import AFFINE, write_brats_case
from typer.testing import CliRunner

from glioseg.data.nifti import save_volume
from glioseg.evaluate.folder import evaluate_folder, score_labels
from glioseg.evaluate.metrics import EvaluationError

SHAPE = (20, 18, 16)
DIAGONAL = math.sqrt(20**2 + 18**2 + 16**2)  # HD95 of a one-sided empty region


def tumour(et: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """File labels: edema 10x10x8 box, necrosis 4x4x4 inside it, an ET 2-voxel shell around it."""
    seg = np.zeros(shape, np.uint8)
    seg[4:14, 4:14, 4:12] = 2
    seg[5:13, 5:13, 5:11] = et
    seg[7:11, 7:11, 6:10] = 1
    return seg


def read_rows(path):
    with open(path) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


@pytest.fixture()
def legacy_data(tmp_path):
    """brats2021 layout: 4 cases; predictions for 1 (perfect), 2 (ET called necrosis),
    4 (no ET anywhere, WT shifted by one voxel); none for 3."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    segs = {i: tumour(4) for i in (1, 2, 3)}
    segs[4] = np.where(tumour(4) == 4, 1, tumour(4)).astype(np.uint8)  # no ET
    for i, seg in segs.items():
        write_brats_case(ref_dir, "brats2021", i, shape=SHAPE, seg=seg)
    preds = {
        1: segs[1],
        2: np.where(segs[2] == 4, 1, segs[2]).astype(np.uint8),
        4: np.roll(segs[4], 1, axis=0),
    }
    for i, p in preds.items():
        save_volume(pred_dir / f"BraTS2021_{i:05d}.nii.gz", p, AFFINE, np.uint8)
    save_volume(pred_dir / "BraTS2021_00099.nii.gz", segs[1], AFFINE, np.uint8)  # no such case
    return ref_dir, pred_dir, segs, preds


def test_legacy_folder_by_hand(legacy_data, tmp_path):
    from medpy.metric.binary import dc, hd95

    ref_dir, pred_dir, segs, preds = legacy_data
    out = tmp_path / "out"
    result = evaluate_folder(pred_dir, ref_dir, out, progress=False)
    rows = read_rows(out / "per_case.csv")
    assert sorted(rows) == [f"BraTS2021_{i:05d}" for i in (1, 2, 3, 4)]
    c1, c2, c3, c4 = (rows[f"BraTS2021_{i:05d}"] for i in (1, 2, 3, 4))
    for region in ("WT", "TC", "ET"):  # perfect
        assert float(c1[f"{region}_dice"]) == 1.0 and float(c1[f"{region}_hd95"]) == 0.0
    # ET predicted as necrosis: WT and TC unchanged, ET empty -> Dice 0, HD95 the diagonal
    assert float(c2["TC_dice"]) == 1.0 and float(c2["ET_dice"]) == 0.0
    assert float(c2["ET_hd95"]) == pytest.approx(DIAGONAL, rel=1e-5)
    assert float(c2["ET_sensitivity"]) == 0.0
    # missing prediction: scored as empty, listed
    assert c3["missing_prediction"] == "1" and c1["missing_prediction"] == "0"
    assert float(c3["WT_dice"]) == 0.0
    assert float(c3["WT_hd95"]) == pytest.approx(DIAGONAL, rel=1e-5)
    assert float(c3["WT_specificity"]) == 1.0
    # no ET in either: Dice 1, HD95 0, sensitivity 1; WT against medpy
    assert float(c4["ET_dice"]) == 1.0 and float(c4["ET_hd95"]) == 0.0
    assert float(c4["ET_sensitivity"]) == 1.0
    wt_p, wt_r = preds[4] > 0, segs[4] > 0
    assert float(c4["WT_dice"]) == pytest.approx(dc(wt_p, wt_r), rel=1e-5)
    assert float(c4["WT_hd95"]) == pytest.approx(hd95(wt_p, wt_r), rel=1e-5)
    # summary: statistics of the per-case column
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheme"] == "brats2020" and summary["distance_unit"] == "voxel"
    assert summary["missing_predictions"] == ["BraTS2021_00003"]
    assert summary["unmatched_predictions"] == ["BraTS2021_00099.nii.gz"]
    wt = np.array([1.0, 1.0, 0.0, dc(wt_p, wt_r)])
    s = summary["metrics"]["dice"]["WT"]
    assert s["mean"] == pytest.approx(wt.mean())
    assert s["std"] == pytest.approx(wt.std(ddof=1))
    assert s["median"] == pytest.approx(np.median(wt))
    assert (s["p25"], s["p75"]) == pytest.approx((np.percentile(wt, 25), np.percentile(wt, 75)))
    assert "lesion_dice" not in summary["metrics"]
    md = (out / "summary.md").read_text()
    assert "| Dice |" in md and "| HD95 |" in md and "1 missing prediction(s)" in md
    assert result.summary == summary
    assert not list(out.glob(".*tmp*"))  # no temporary files left


def test_tables_half_written_by_a_killed_run_are_removed(legacy_data, tmp_path):
    from glioseg.io_atomic import temporary_name

    ref_dir, pred_dir, _, _ = legacy_data
    out = tmp_path / "out"
    out.mkdir()
    half = temporary_name(out / "per_case.csv")
    half.write_text("case_id,WT_di")
    evaluate_folder(pred_dir, ref_dir, out, progress=False)
    assert not half.exists() and (out / "per_case.csv").is_file()


def test_parallel_equals_serial(legacy_data, tmp_path):
    ref_dir, pred_dir, _, _ = legacy_data
    serial = evaluate_folder(pred_dir, ref_dir, tmp_path / "a", progress=False)
    parallel = evaluate_folder(pred_dir, ref_dir, tmp_path / "b", workers=2, progress=False)
    assert serial.rows == parallel.rows


def test_spacing_mm_uses_the_image_spacing(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    write_brats_case(tmp_path / "ref", "brats2021", 1, shape=SHAPE, seg=tumour(4), affine=affine)
    pred = np.where(tumour(4) == 4, 1, tumour(4)).astype(np.uint8)
    save_volume(tmp_path / "pred" / "BraTS2021_00001.nii.gz", pred, affine, np.uint8)
    r = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", spacing_mm=True,
                        progress=False)
    assert r.summary["distance_unit"] == "mm"
    assert r.rows[0]["ET_hd95"] == pytest.approx(math.sqrt(40**2 + 36**2 + 48**2))


def test_grid_mismatch_is_an_error_naming_the_case(tmp_path):
    write_brats_case(tmp_path / "ref", "brats2021", 1, shape=SHAPE, seg=tumour(4))
    write_brats_case(tmp_path / "ref", "brats2021", 2, shape=SHAPE, seg=tumour(4))
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    save_volume(tmp_path / "pred" / "BraTS2021_00001.nii.gz", tumour(4), shifted, np.uint8)
    save_volume(tmp_path / "pred" / "BraTS2021_00002.nii.gz", tumour(4)[:, :, :15], AFFINE,
                np.uint8)
    with pytest.raises(EvaluationError) as info:
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    message = str(info.value)
    assert "BraTS2021_00001: BraTS2021_00001.nii.gz: prediction affine differs" in message
    assert "BraTS2021_00002: BraTS2021_00002.nii.gz: prediction shape (20, 18, 15)" in message
    assert not (tmp_path / "out" / "per_case.csv").exists()


@pytest.mark.parametrize("layout, bad", [("brats2021", 3), ("brats2020", 3), ("brats2023", 4)])
def test_label_outside_the_scheme_is_an_error_naming_the_case(tmp_path, layout, bad):
    et = 3 if layout == "brats2023" else 4
    folder = write_brats_case(tmp_path / "ref", layout, 1, shape=SHAPE, seg=tumour(et))
    pred = tumour(et)
    pred[0, 0, 0] = bad
    save_volume(tmp_path / "pred" / f"{folder.name}.nii.gz", pred, AFFINE, np.uint8)
    with pytest.raises(EvaluationError, match=rf"{folder.name}: prediction {folder.name}"
                       rf"\.nii\.gz: labels \[{bad}\] are not allowed in the {layout} scheme"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout, bad", [("brats2021", 3), ("brats2023", 4)])
def test_label_outside_the_scheme_in_the_reference_names_its_file(tmp_path, layout, bad):
    """A 4 in a 2023 reference (resection cavity in later schemes) is never read as ET."""
    et = 3 if layout == "brats2023" else 4
    seg = tumour(et)
    seg[6, 6, 6] = bad
    folder = write_brats_case(tmp_path / "ref", layout, 1, shape=SHAPE, seg=seg)
    save_volume(tmp_path / "pred" / f"{folder.name}.nii.gz", tumour(et), AFFINE, np.uint8)
    seg_file = next(folder.glob("*seg.nii.gz")).name
    with pytest.raises(EvaluationError, match=rf"{folder.name}: reference {seg_file}: "
                                              rf"labels \[{bad}\]"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)


def test_no_matching_prediction_is_an_error(legacy_data, tmp_path):
    """Predictions all named otherwise than <case_id>.nii.gz: an error, not four empty cases."""
    ref_dir, _, segs, _ = legacy_data
    pred_dir = tmp_path / "misnamed"
    for i in (1, 2):
        save_volume(pred_dir / f"BraTS2021_{i:05d}_seg.nii.gz", segs[i], AFFINE, np.uint8)
    with pytest.raises(EvaluationError, match=r"no prediction matches a reference case .* "
                       r"e\.g\. BraTS2021_00001\.nii\.gz; found 2 other NIfTI file\(s\): "
                       r"BraTS2021_00001_seg\.nii\.gz, BraTS2021_00002_seg\.nii\.gz"):
        evaluate_folder(pred_dir, ref_dir, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="found no NIfTI file"):
        evaluate_folder(tmp_path / "empty", ref_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_brats2023_layout_is_scored_lesion_wise(tmp_path):
    """Reference: the tumour (WT 10x10x8 = 800 voxels) and a distant 4x4x4 edema lesion;
    prediction: the tumour only. WT: 2 lesions, one perfect, one missed -> lesion-wise Dice
    1/2, HD95 374/2; legacy WT Dice 2*800/(800+864)."""
    shape = (32, 18, 16)
    seg = tumour(3, shape)
    seg[24:28, 10:14, 6:10] = 2  # 11 voxels from the tumour along x: a lesion of its own
    folder = write_brats_case(tmp_path / "ref", "brats2023", 1, shape=shape, seg=seg)
    save_volume(tmp_path / "pred" / f"{folder.name}.nii.gz", tumour(3, shape), AFFINE, np.uint8)
    r = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    row = r.rows[0]
    assert r.summary["scheme"] == "brats2023"
    assert row["WT_lesion_dice"] == pytest.approx(0.5)
    assert row["WT_lesion_hd95"] == pytest.approx(187.0)
    assert (row["WT_lesion_tp"], row["WT_lesion_fn"], row["WT_lesion_fp"]) == (1, 1, 0)
    assert row["WT_dice"] == pytest.approx(2 * 800 / (800 + 864))
    assert row["ET_lesion_dice"] == 1.0 and row["TC_lesion_dice"] == 1.0
    assert "lesion_dice" in r.summary["metrics"]
    assert r.summary["lesion_counts"]["WT"] == {"tp": 1, "fn": 1, "fp": 0}
    assert r.summary["lesion_counts"]["ET"] == {"tp": 1, "fn": 0, "fp": 0}
    assert "| Lesions TP / FN / FP | 1 / 1 / 0 | 1 / 0 / 0 | 1 / 0 / 0 |" in (
        tmp_path / "out" / "summary.md").read_text()
    # the legacy scheme on the same folder has no lesion-wise columns
    legacy = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out2",
                             scheme="brats2020", progress=False)
    assert "WT_lesion_dice" not in legacy.rows[0]
    assert legacy.rows[0]["WT_dice"] == row["WT_dice"]


@pytest.mark.parametrize("spacing_mm", [False, True])
def test_lesion_wise_uses_the_header_spacing_like_the_2023_code(tmp_path, spacing_mm):
    """An anisotropic 1 x 1 x 3 mm grid, where voxel units and the header's spacing disagree.
    The 2023 reference code reads the spacing from the header: lesion volume = voxels x 3 mm^3
    against the 50 mm^3 threshold, HD95 in mm. Reference (edema, so WT only): lesion A, a
    4x4x4 cube (64 voxels, 192 mm^3), and lesion B, 4x4x2 (32 voxels: 96 mm^3 > 50, though
    <= 50 voxels), 12 slices above A. Prediction: A without its top slice (4x4x3), B missed.
    A: Dice 2*48/(64+48) = 6/7; its HD95 is the missing slice, 1 voxel along z = 3 mm (every
    reference surfel is 0 or 3 mm from the prediction, the top face's being well over 5% of
    the area; the prediction's surfels are all within 2 mm of the reference).
    B counts and is missed: Dice 0, HD95 374. Lesion-wise Dice (6/7 + 0)/2 = 3/7, HD95
    (3 + 374)/2 = 188.5. In voxel units B (32 voxels) would be left out: 6/7 and 1.
    The legacy HD95 stays in voxels unless --spacing-mm (medpy's hd95 both ways)."""
    from medpy.metric.binary import hd95

    shape = (14, 14, 32)
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    affine[1, 3] = 239.0
    seg = np.zeros(shape, np.uint8)
    seg[4:8, 4:8, 4:8] = 2
    seg[4:8, 4:8, 20:22] = 2
    pred = np.zeros(shape, np.uint8)
    pred[4:8, 4:8, 4:7] = 2
    folder = write_brats_case(tmp_path / "ref", "brats2023", 1, shape=shape, seg=seg,
                              affine=affine)
    save_volume(tmp_path / "pred" / f"{folder.name}.nii.gz", pred, affine, np.uint8)
    r = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out",
                        spacing_mm=spacing_mm, progress=False)
    row = r.rows[0]
    assert row["WT_lesion_dice"] == pytest.approx(3 / 7)
    assert row["WT_lesion_hd95"] == pytest.approx(188.5)
    assert (row["WT_lesion_tp"], row["WT_lesion_fn"], row["WT_lesion_fp"]) == (1, 1, 0)
    assert row["TC_lesion_dice"] == 1.0 and row["TC_lesion_hd95"] == 0.0  # both empty
    legacy = hd95(pred > 0, seg > 0, voxelspacing=(1.0, 1.0, 3.0) if spacing_mm else None)
    assert row["WT_hd95"] == pytest.approx(legacy)
    assert r.summary["distance_unit"] == ("mm" if spacing_mm else "voxel")
    assert r.summary["lesion_distance_unit"] == "mm"
    # the pure function with the old reading (1 mm per voxel) gives the voxel-unit values
    voxel = score_labels(pred, seg, "brats2023", "brats2023")
    assert (voxel["WT_lesion_dice"], voxel["WT_lesion_hd95"]) == pytest.approx((6 / 7, 1.0))


def test_score_labels_crop_matches_full_grid_counts():
    """Specificity counts the voxels outside the working crop as true negatives."""
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[10:14, 10:14, 10:14] = 2
    pred = np.zeros_like(ref)
    pred[10:14, 10:14, 10:13] = 2
    pred[25, 25, 25] = 2
    s = score_labels(pred, ref, "brats2020")
    # TP 48, FP 1, FN 16, TN 27000 - 65
    assert s["WT_specificity"] == pytest.approx((27000 - 65) / (27000 - 64))
    assert s["WT_sensitivity"] == pytest.approx(48 / 64)
    assert s["WT_dice"] == pytest.approx(96 / (49 + 64))


def test_cli_evaluate(legacy_data, tmp_path):
    from glioseg.cli import app

    ref_dir, pred_dir, _, _ = legacy_data
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir),
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "| Dice |" in res.output
    assert (out / "per_case.csv").is_file() and (out / "summary.json").is_file()
    bad = runner.invoke(app, ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir),
                              "-o", str(out), "--scheme", "brats2019"])
    assert bad.exit_code == 1
    assert "unknown scoring scheme 'brats2019'" in bad.output


def test_figures(legacy_data, tmp_path):
    ref_dir, pred_dir, _, _ = legacy_data
    out = tmp_path / "fig"
    r = evaluate_folder(pred_dir, ref_dir, out, progress=False)
    from glioseg.report.eval_figures import draw_evaluation_figures

    draw_evaluation_figures(r, out)  # the figures are the report's, drawn by the caller
    assert (out / "boxplot.png").stat().st_size > 1000
    # WT Dice: cases 1 and 2 are 1.0 (best: the later id on ties), 3 is 0 (worst)
    assert r.paths["overlay_best"].name == "overlay_best_BraTS2021_00002.png"
    assert r.paths["overlay_worst"].name == "overlay_worst_BraTS2021_00003.png"
    for key in ("overlay_best", "overlay_median", "overlay_worst"):
        assert r.paths[key].is_file()
    from glioseg.report.eval_figures import overlay_caption

    rows = {row["case_id"]: row for row in r.rows}
    assert overlay_caption("worst", rows["BraTS2021_00003"]) == (
        "worst case by WT Dice: BraTS2021_00003   Dice WT 0.000  TC 0.000  ET 0.000"
        "   (no prediction: scored as empty)")
    assert overlay_caption("best", rows["BraTS2021_00002"]).startswith(
        "best case by WT Dice: BraTS2021_00002   Dice WT 1.000  TC 1.000  ET 0.000")


def test_figures_read_predictions_in_their_named_scheme(legacy_data, tmp_path):
    """brats2021 references, predictions written in the 2023 scheme (ET = 3) and named so:
    scores equal those of the same predictions in the references' scheme, and the overlays
    read them in that scheme too (a 3 is not a brats2021 label: it would be refused)."""
    ref_dir, pred_dir, _, preds = legacy_data
    as_2023 = tmp_path / "pred2023"
    for i, p in preds.items():
        save_volume(as_2023 / f"BraTS2021_{i:05d}.nii.gz", np.where(p == 4, 3, p), AFFINE,
                    np.uint8)
    same = evaluate_folder(pred_dir, ref_dir, tmp_path / "a", progress=False)
    named = evaluate_folder(as_2023, ref_dir, tmp_path / "b", pred_label_scheme="brats2023",
                            progress=False)
    from glioseg.report.eval_figures import draw_evaluation_figures

    draw_evaluation_figures(named, tmp_path / "b")
    assert named.rows == same.rows
    assert named.paths["overlay_best"].is_file()


def test_cli_reads_the_label_scheme_predict_recorded(legacy_data, tmp_path):
    """Predictions written by ``predict --scheme brats2023`` against brats2021 references: the
    scheme in predict.json is used and said so; --pred-labels wins; a refused label hints at
    --pred-labels."""
    from glioseg.cli import app

    ref_dir, pred_dir, _, preds = legacy_data
    as_2023 = tmp_path / "pred2023"
    for i, p in preds.items():
        save_volume(as_2023 / f"BraTS2021_{i:05d}.nii.gz", np.where(p == 4, 3, p), AFFINE,
                    np.uint8)
    runner = CliRunner()
    args = ["evaluate", "--pred", str(as_2023), "--ref", str(ref_dir)]
    no_record = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert no_record.exit_code == 1
    assert "labels [3] are not allowed in the brats2021 scheme" in no_record.output
    assert "name it with --pred-labels (brats2020, brats2021, brats2023, msd)" in no_record.output
    (as_2023 / "predict.json").write_text(json.dumps({"options": {"scheme": "brats2023"}}))
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (f"reading the predictions in the brats2023 label scheme, as "
            f"{as_2023 / 'predict.json'} records (--pred-labels overrides)") in res.output
    same = evaluate_folder(pred_dir, ref_dir, tmp_path / "c", progress=False)
    assert read_rows(tmp_path / "b" / "per_case.csv") == read_rows(same.paths["per_case"])
    assert evaluate_folder(as_2023, ref_dir, tmp_path / "d", progress=False).rows == same.rows
    explicit = runner.invoke(app, [*args, "-o", str(tmp_path / "e"), "--pred-labels",
                                   "brats2021"])
    assert explicit.exit_code == 1 and "reading the predictions" not in explicit.output
    assert "not allowed in the brats2021 scheme" in explicit.output


def test_hidden_temporaries_are_not_predictions(legacy_data, tmp_path):
    """A predict killed mid-write leaves ``.<case>.nii.gz.<random>.tmp.nii.gz`` beside the
    finished files (glioseg bench faults): not a prediction, not an unmatched one."""
    ref_dir, pred_dir, segs, _ = legacy_data
    (pred_dir / "BraTS2021_00099.nii.gz").unlink()
    save_volume(pred_dir / ".BraTS2021_00003.nii.gz.1a2b3c4d.tmp.nii.gz", segs[3], AFFINE,
                np.uint8)
    summary = evaluate_folder(pred_dir, ref_dir, tmp_path / "out", progress=False).summary
    assert summary["unmatched_predictions"] == []
    assert summary["missing_predictions"] == ["BraTS2021_00003"]


def test_references_declared_in_the_2023_scheme(legacy_data, tmp_path):
    """BraTS 2021 names, references and predictions in nnU-Net's 0/1/2/3: refused with the
    --ref-labels hint (the reference named, not the prediction); declared, the scores equal
    those of the same files in 0/1/2/4, and predictions follow the references' scheme."""
    from glioseg.cli import app

    ref_dir, pred_dir, segs, preds = legacy_data
    ref23, pred23 = tmp_path / "ref23", tmp_path / "pred23"
    for i, seg in segs.items():
        write_brats_case(ref23, "brats2021", i, shape=SHAPE,
                         seg=np.where(seg == 4, 3, seg).astype(np.uint8))
    for i, p in preds.items():
        save_volume(pred23 / f"BraTS2021_{i:05d}.nii.gz", np.where(p == 4, 3, p), AFFINE,
                    np.uint8)
    runner = CliRunner()
    args = ["evaluate", "--pred", str(pred23), "--ref", str(ref23)]
    refused = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])
    out = " ".join(refused.output.split())
    assert refused.exit_code == 1
    assert "BraTS2021_00001: reference BraTS2021_00001_seg.nii.gz: labels [3]" in out
    assert "declare the scheme: --ref-labels brats2023" in out
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "b"), "--ref-labels", "brats2023"])
    assert res.exit_code == 0, res.output
    same = evaluate_folder(pred_dir, ref_dir, tmp_path / "c", progress=False)
    assert read_rows(tmp_path / "b" / "per_case.csv") == read_rows(same.paths["per_case"])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["label_schemes"] == ["brats2023"] and summary["scheme"] == "brats2020"
    result = evaluate_folder(pred23, ref23, tmp_path / "d", progress=False,
                             ref_label_scheme="brats2023")
    assert result.rows == same.rows and result.ref_label_scheme == "brats2023"
    figs = runner.invoke(app, [*args, "-o", str(tmp_path / "e"), "--ref-labels", "brats2023",
                               "--figures"])
    assert figs.exit_code == 0, figs.output
    # the overlays read the references in the declared scheme too: the same pictures as the
    # 0/1/2/4 files give
    same_figs = runner.invoke(app, ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir),
                                    "-o", str(tmp_path / "g"), "--figures"])
    assert same_figs.exit_code == 0, same_figs.output
    overlays = sorted(p.name for p in (tmp_path / "g").glob("overlay_*.png"))
    assert overlays and overlays == sorted(p.name for p in (tmp_path / "e").glob("overlay_*.png"))
    for name in overlays:
        assert (tmp_path / "e" / name).read_bytes() == (tmp_path / "g" / name).read_bytes(), name
    unknown = runner.invoke(app, [*args, "-o", str(tmp_path / "f"), "--ref-labels", "nnunet"])
    assert unknown.exit_code == 1
    assert "--ref-labels nnunet: unknown label scheme" in unknown.output

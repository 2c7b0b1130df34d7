"""`show_case`: orientation helpers checked by hand, PNGs written for every view and with a
prediction, clear errors for bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from glioseg.data import labels as L
from glioseg.data import synthetic as S
from glioseg.data.nifti import load_volume, save_volume
from glioseg.report import figures as F


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_to_ras_flips_lps_axes_by_hand():
    vol = np.arange(24).reshape(2, 3, 4)
    ras = F.to_ras(vol, ("L", "P", "S"))
    # L -> R flips axis 0, P -> A flips axis 1, S kept
    assert ras[0, 0, 0] == vol[1, 2, 0]
    assert ras[1, 2, 3] == vol[0, 0, 3]
    perm = F.to_ras(vol, ("A", "S", "R"))  # stored axes: y, z, x
    assert perm.shape == (4, 2, 3)
    assert perm[1, 0, 2] == vol[0, 2, 1]


def test_axial_view_is_radiological_and_upright():
    ras = np.zeros((5, 6, 3))
    ras[4, 0, 1] = 1.0  # patient's far right (x max), posterior (y min)
    sl = F.view_slice(ras, "axial", 1)
    assert sl.shape == (6, 5)
    # patient's right on the viewer's left, posterior at the bottom
    assert sl[-1, 0] == 1.0
    cor = np.zeros((5, 6, 3))
    cor[0, 2, 2] = 1.0  # left, top
    assert F.view_slice(cor, "coronal", 2)[0, -1] == 1.0
    sag = np.zeros((5, 6, 3))
    sag[1, 5, 0] = 1.0  # anterior, bottom
    assert F.view_slice(sag, "sagittal", 1)[-1, 0] == 1.0


def test_best_slice_is_the_one_with_most_tumour():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:4, 2:4, 5] = True
    mask[2:6, 2:6, 6] = True
    brain = np.ones_like(mask)
    assert F.best_slice(mask, brain, "axial") == 6
    assert F.best_slice(mask, brain, "sagittal") in (2, 3)
    assert F.best_slice(None, brain, "axial") == 3


def test_show_case_writes_pngs(synth_cohort, tmp_path):
    case = synth_cohort[0]
    out = F.show_case(case, tmp_path / "a.png")
    w1, h1 = _png_size(out)
    assert w1 > 800 and h1 > 250
    three = F.show_case(case, tmp_path / "b.png", views=("axial", "coronal", "sagittal"))
    w3, h3 = _png_size(three)
    assert h3 > 2 * h1
    assert not list(tmp_path.glob(".*tmp*"))


def test_show_case_with_prediction_adds_a_panel(synth_cohort, tmp_path):
    case = synth_cohort[1]
    seg, hdr = load_volume(case / f"{case.name}_seg.nii.gz", dtype=None)
    pred = np.where(seg == 4, 1, seg).astype(np.uint8)  # brats2021 file labels (no 4 left)
    save_volume(tmp_path / "pred.nii.gz", pred, hdr.affine)
    w_ref, _ = _png_size(F.show_case(case, tmp_path / "ref.png"))
    w_pred, _ = _png_size(F.show_case(case, tmp_path / "pred.png", pred=tmp_path / "pred.nii.gz"))
    assert w_pred > w_ref * 1.1


def test_show_case_errors_are_clear(synth_cohort, tmp_path):
    case = synth_cohort[0]
    with pytest.raises(ValueError, match="unknown view"):
        F.show_case(case, tmp_path / "x.png", views=("oblique",))
    save_volume(tmp_path / "small.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "small.nii.gz")
    bad = np.zeros((120, 120, 78), np.uint8)
    bad[0, 0, 0] = 7
    save_volume(tmp_path / "bad.nii.gz", bad, S.grid_affine(2.0))
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: label values \[7\]"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "bad.nii.gz")
    assert not (tmp_path / "x.png").exists()


def _case_seg(case) -> tuple[np.ndarray, np.ndarray]:
    seg, hdr = load_volume(case / f"{case.name}_seg.nii.gz", dtype=None)
    return seg, hdr.affine


def test_show_pred_in_the_other_scheme_is_an_error_unless_named(synth_cohort, tmp_path):
    """A brats2021 case (ET = 4) with a prediction written in the 2023 scheme (ET = 3): the 3
    is named in the error, not read as ET behind the user's back; ``pred_labels`` says so."""
    case = synth_cohort[1]
    seg, affine = _case_seg(case)
    assert 4 in np.unique(seg)
    as_2023 = np.where(seg == 4, 3, seg).astype(np.uint8)
    save_volume(tmp_path / "p2023.nii.gz", as_2023, affine)
    with pytest.raises(ValueError, match=r"p2023\.nii\.gz: label values \[3\] are not allowed "
                                         r"in the brats2021 scheme.*--pred-labels"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "p2023.nii.gz")
    assert not (tmp_path / "x.png").exists()
    out = F.show_case(case, tmp_path / "ok.png", pred=tmp_path / "p2023.nii.gz",
                      pred_labels="brats2023")
    assert out.is_file()
    # read in the named scheme, the file's 3s are enhancing tumour (internal 3), its 1s necrosis
    hdr = load_volume(case / f"{case.name}_t1.nii.gz", dtype=None)[1]
    internal = F._load_pred(tmp_path / "p2023.nii.gz", "brats2023", hdr, case)
    np.testing.assert_array_equal(internal == L.ET, seg == 4)
    np.testing.assert_array_equal(internal == L.NCR, seg == 1)
    with pytest.raises(ValueError, match="unknown label scheme 'brats2019'"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "p2023.nii.gz",
                    pred_labels="brats2019")


def test_show_a_case_whose_labels_are_declared_in_another_scheme(synth_cohort, tmp_path):
    """BraTS 2021 names, segmentation in nnU-Net's 0/1/2/3 (``show --labels brats2023``): the
    same picture as the 0/1/2/4 original; without the declaration, an error naming the 3."""
    from typer.testing import CliRunner

    from glioseg.cli import app

    case = synth_cohort[1]
    seg, affine = _case_seg(case)
    copy = tmp_path / "data" / case.name
    shutil.copytree(case, copy)
    save_volume(copy / f"{case.name}_seg.nii.gz", np.where(seg == 4, 3, seg).astype(np.uint8),
                affine)
    F.show_case(case, tmp_path / "orig.png")
    F.show_case(copy, tmp_path / "declared.png", labels="brats2023")
    assert (tmp_path / "orig.png").read_bytes() == (tmp_path / "declared.png").read_bytes()
    with pytest.raises(ValueError, match=r"\[3\]"):
        F.show_case(copy, tmp_path / "x.png")
    res = CliRunner().invoke(app, ["show", str(copy), "-o", str(tmp_path / "cli.png"),
                                   "--labels", "brats2023"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "orig.png").read_bytes()


def test_show_pred_with_fractional_values_is_an_error(synth_cohort, tmp_path):
    """A float prediction holding 0.5 (probabilities, or a file resampled with interpolation)
    is refused, not rounded; a float file of whole label values is fine."""
    case = synth_cohort[0]
    seg, affine = _case_seg(case)
    soft = seg.astype(np.float32)
    soft[seg == 2] = 0.5
    save_volume(tmp_path / "soft.nii.gz", soft, affine, np.float32)
    with pytest.raises(ValueError, match=r"soft\.nii\.gz: non-integer label values \(0\.5\)"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "soft.nii.gz")
    save_volume(tmp_path / "whole.nii.gz", seg.astype(np.float32), affine, np.float32)
    assert F.show_case(case, tmp_path / "whole.png", pred=tmp_path / "whole.nii.gz").is_file()
    assert not (tmp_path / "x.png").exists()


def test_show_pred_on_another_grid_is_an_error_naming_both_files(synth_cohort, tmp_path):
    """Same shape but an affine shifted by 2 mm: another grid, so an error naming the
    prediction and the case file it was compared with (the case's segmentation)."""
    case = synth_cohort[0]
    seg, affine = _case_seg(case)
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    save_volume(tmp_path / "moved.nii.gz", seg, shifted)
    with pytest.raises(ValueError, match=rf"moved\.nii\.gz: prediction affine differs from the "
                                         rf"case's .*{case.name}_seg\.nii\.gz"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "moved.nii.gz")
    assert not (tmp_path / "x.png").exists()


def test_show_case_without_segmentation(synth_cohort, tmp_path):
    folder = tmp_path / synth_cohort[2].name
    shutil.copytree(synth_cohort[2], folder)
    (folder / f"{folder.name}_seg.nii.gz").unlink()
    w, h = _png_size(F.show_case(folder, tmp_path / "noseg.png"))
    assert w > 800 and h > 250


def test_overlay_colours_are_distinct():
    lab = np.array([[0, L.NCR], [L.ED, L.ET]])
    rgba = F._overlay_rgba(lab, 0.5)
    assert rgba[0, 0, 3] == 0
    colours = {tuple(rgba[i, j, :3]) for i, j in ((0, 1), (1, 0), (1, 1))}
    assert len(colours) == 3

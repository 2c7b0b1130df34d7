"""`show_case`: orientation helpers checked by hand, PNGs written for every view and with a
prediction, clear errors for bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from glioseg.data import labels as L
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
    save_volume(tmp_path / "bad.nii.gz", bad, np.eye(4))
    with pytest.raises(ValueError, match="label values"):
        F.show_case(case, tmp_path / "x.png", pred=tmp_path / "bad.nii.gz")
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

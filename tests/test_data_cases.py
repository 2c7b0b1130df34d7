"""``glioseg.data.cases``: loading and validation of cases in every published layout.

The channel order and the label mapping are checked against file names and values written
out by hand (``datafiles``, not taken from the code under test): each file on disk gets its
own value, and the loaded array must hold, at each channel, the value of the file that the
published layout says is that modality. Discovery itself is tested in ``test_layouts.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from datafiles import (
    AFFINE,
    BRATS_CASES,
    CANONICAL,
    SHAPE,
    example_seg,
    garbage,
    modality_volume,
    pattern,
    truncate,
    write_brats_case,
    write_by_hand,
    write_msd_case,
)

from glioseg.data.cases import CaseError, check_case, discover, examine_case, load_case
from glioseg.data.nifti import save_volume

# (file label, internal label): 0 bg, 1 necrosis/NETC, 2 edema, 3 enhancing tumour.
LABEL_TABLE = {
    "brats2020": [(0, 0), (1, 1), (2, 2), (4, 3)],
    "brats2021": [(0, 0), (1, 1), (2, 2), (4, 3)],
    "brats2023": [(0, 0), (1, 1), (2, 2), (3, 3)],
    # MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    "msd": [(0, 0), (1, 2), (2, 1), (3, 3)],
}


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_channel_order_and_axes(tmp_path, layout, cid, ext):
    write_by_hand(tmp_path, layout, cid, ext)
    data = load_case(discover(tmp_path / cid)[0])
    assert data.image.shape == (4, *SHAPE) and data.image.dtype == np.float32
    assert data.labels is None
    for i, name in enumerate(CANONICAL):
        # channel i must hold the file with suffix PUBLISHED_SUFFIX[layout][i], written with
        # 1000 * (i + 1) + flat index, voxel for voxel
        np.testing.assert_array_equal(data.image[i], 1000.0 * (i + 1) + pattern(SHAPE),
                                      err_msg=name)
    # axes as stored: voxel (5, 4, 3) of a C-ordered 6x5x4 ramp is 5*20 + 4*4 + 3 = 119
    assert data.image[3, 5, 4, 3] == 4000.0 + 119
    assert data.header.shape == SHAPE
    assert data.header.orientation == ("L", "P", "S")


def test_flair_is_not_t2_in_brats2023(tmp_path):
    """t2f is FLAIR and t2w is T2 (the 2023 names invite the opposite mistake)."""
    cid = "BraTS-GLI-00001-000"
    for suffix, value in (("t1n", 10.0), ("t1c", 20.0), ("t2w", 30.0), ("t2f", 40.0)):
        save_volume(tmp_path / cid / f"{cid}-{suffix}.nii.gz", np.full(SHAPE, value), AFFINE)
    image = load_case(discover(tmp_path)[0]).image
    assert image[:, 0, 0, 0].tolist() == [10.0, 20.0, 30.0, 40.0]  # t1, t1ce, t2, flair


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_label_mapping(tmp_path, layout, cid, ext):
    seg = np.zeros(SHAPE, dtype=np.uint8)
    for x, (file_value, _) in enumerate(LABEL_TABLE[layout]):
        seg[x, : x + 1] = file_value  # x + 1 rows of 4 voxels: every label a different size
    write_by_hand(tmp_path, layout, cid, ext, seg=seg)
    labels = load_case(discover(tmp_path)[0]).labels
    assert labels is not None and labels.dtype == np.uint8 and labels.shape == SHAPE
    for x, (file_value, internal) in enumerate(LABEL_TABLE[layout]):
        assert (labels[x, : x + 1] == internal).all(), (file_value, internal)
    assert (labels[len(LABEL_TABLE[layout]):] == 0).all()
    # slab x = 1, 2, 3 holds 2, 3, 4 rows of 4 voxels; the rest of the 120 voxels is background
    counts = examine_case(discover(tmp_path)[0]).label_counts
    assert counts == {0: 120 - 8 - 12 - 16, 1: 8, 2: 12, 3: 16}


def test_brats2021_files_written_by_nibabel_directly(tmp_path):
    """A reader check independent of save_volume: int16 with scaling, as scanners write."""
    import nibabel as nib

    cid = "BraTS2021_01666"
    folder = tmp_path / cid
    folder.mkdir()
    ramp = np.arange(120, dtype=np.int16).reshape(SHAPE)
    for k, suffix in enumerate(("t1", "t1ce", "t2", "flair")):
        img = nib.Nifti1Image(ramp + 100 * (k + 1), AFFINE)
        img.header.set_data_dtype(np.int16)
        img.header.set_slope_inter(2.0, 0.5)
        nib.save(img, folder / f"{cid}_{suffix}.nii.gz")
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[1, 2, 3] = 4
    nib.save(nib.Nifti1Image(seg, AFFINE), folder / f"{cid}_seg.nii.gz")
    data = load_case(discover(tmp_path)[0])
    for k in range(4):
        # stored int16 = the array given; value = slope * stored + intercept
        np.testing.assert_array_equal(data.image[k], 2.0 * (ramp + 100 * (k + 1)) + 0.5)
    assert data.labels[1, 2, 3] == 3 and int(data.labels.sum()) == 3


# ------------------------------------------------------------------ bad inputs


def _one(tmp_path):
    (case,) = discover(tmp_path)
    return case


def _assert_problem(case, file_name, words, read_voxels=True):
    problems = check_case(case, read_voxels=read_voxels)
    hits = [p for p in problems if file_name in p and case.case_id in p]
    assert hits, problems
    assert any(all(w in p for w in words) for p in hits), problems
    with pytest.raises(CaseError, match=case.case_id):
        load_case(case)


def test_missing_modality(tmp_path):
    write_brats_case(tmp_path, "brats2023", 1, skip=["flair"])
    case = _one(tmp_path)
    assert case.missing == ("flair",)
    _assert_problem(case, "BraTS-GLI-00001-000-t2f.nii", ["missing modality flair"])


def test_shapes_disagree(tmp_path):
    write_brats_case(tmp_path, "brats2021", 1, images={"t2": np.zeros((6, 5, 3))})
    _assert_problem(_one(tmp_path), "BraTS2021_00001_t2.nii.gz", ["shape (6, 5, 3) differs"])


def test_seg_shape_disagrees(tmp_path):
    write_brats_case(tmp_path, "brats2021", 1, seg=np.zeros((5, 5, 4), np.uint8))
    _assert_problem(_one(tmp_path), "BraTS2021_00001_seg.nii.gz", ["shape (5, 5, 4) differs"])


def test_affines_disagree(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    write_brats_case(tmp_path, "brats2021", 1, affines={"t1ce": shifted})
    _assert_problem(_one(tmp_path), "BraTS2021_00001_t1ce.nii.gz", ["affine differs"],
                    read_voxels=False)


@pytest.mark.parametrize("layout, value", [("brats2020", 3), ("brats2021", 3),
                                           ("brats2023", 4), ("msd", 4)])
def test_unexpected_label_values(tmp_path, layout, value):
    seg = example_seg(layout)
    seg[5, 0, 0] = value
    if layout == "msd":
        write_msd_case(tmp_path, "BRATS_001", seg=seg)
        name = "BRATS_001.nii.gz"
    else:
        folder = write_brats_case(tmp_path, layout, 1, seg=seg)
        name = next(p.name for p in folder.iterdir() if "seg" in p.name)
    _assert_problem(_one(tmp_path), name, [f"unexpected label values [{value}]"])


def test_nan_and_inf_voxels(tmp_path):
    t1 = modality_volume("t1")
    t1[0, 0, 0] = np.nan
    t1[1, 0, 0] = np.inf
    write_brats_case(tmp_path, "brats2021", 1, images={"t1": t1})
    _assert_problem(_one(tmp_path), "BraTS2021_00001_t1.nii.gz", ["2 NaN/inf voxels"])
    assert check_case(_one(tmp_path), read_voxels=False) == []  # headers alone cannot tell


@pytest.mark.parametrize("bad, words", [(np.nan, "NaN/inf in segmentation"),
                                         (1.5, "non-integer label values [1.5]")])
def test_float_segmentation_with_nan_or_fractions(tmp_path, bad, words):
    seg = example_seg("brats2021").astype(np.float32)
    seg[2, 1, 0] = bad
    write_brats_case(tmp_path, "brats2021", 1, seg=seg, seg_dtype=np.float32)
    _assert_problem(_one(tmp_path), "BraTS2021_00001_seg.nii.gz", [words])


def test_unreadable_file(tmp_path):
    folder = write_brats_case(tmp_path, "brats2020", 1, ext=".nii")
    garbage(folder / "BraTS20_Training_001_t1ce.nii")
    for read_voxels in (True, False):
        _assert_problem(_one(tmp_path), "BraTS20_Training_001_t1ce.nii", ["not a readable NIfTI"],
                        read_voxels=read_voxels)


def test_truncated_gz(tmp_path):
    """Half a real .nii.gz: the header still reads, the voxels do not."""
    rng = np.random.default_rng(0)
    shape = (24, 20, 16)
    images = {m: rng.normal(size=shape).astype(np.float32) for m in CANONICAL}
    folder = write_brats_case(tmp_path, "brats2021", 1, shape=shape, images=images,
                              seg=np.zeros(shape, np.uint8))
    truncate(folder / "BraTS2021_00001_flair.nii.gz", 0.5)
    case = _one(tmp_path)
    assert check_case(case, read_voxels=False) == []
    _assert_problem(case, "BraTS2021_00001_flair.nii.gz", ["truncated or corrupt"])


def test_4d_where_3d_expected(tmp_path):
    write_brats_case(tmp_path, "brats2023", 1, images={"t1ce": np.zeros((*SHAPE, 1))})
    _assert_problem(_one(tmp_path), "BraTS-GLI-00001-000-t1c.nii.gz", ["expected a 3D volume"])


def test_msd_3d_where_4d_expected(tmp_path):
    write_msd_case(tmp_path, "BRATS_001", image=np.zeros(SHAPE))
    _assert_problem(_one(tmp_path), "BRATS_001.nii.gz", ["expected a 4D image with 4 channels"])


def test_msd_seg_affine_disagrees(tmp_path):
    write_msd_case(tmp_path, "BRATS_001", seg_affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    _assert_problem(_one(tmp_path), "BRATS_001.nii.gz", ["affine differs"])


def test_every_problem_of_a_case_is_reported(tmp_path):
    t2 = modality_volume("t2")
    t2[2, 2, 2] = np.nan
    seg = example_seg("brats2021")
    seg[5] = 7
    folder = write_brats_case(tmp_path, "brats2021", 1, skip=["t1"], images={"t2": t2}, seg=seg)
    garbage(folder / "BraTS2021_00001_flair.nii.gz")
    problems = check_case(_one(tmp_path))
    assert len(problems) == 4, problems
    assert "missing modality t1" in problems[0]
    assert "BraTS2021_00001_t2.nii.gz: 1 NaN/inf" in problems[1]
    assert "BraTS2021_00001_flair.nii.gz: not a readable NIfTI" in problems[2]
    assert "BraTS2021_00001_seg.nii.gz: unexpected label values [7]" in problems[3]


def test_constant_modality_and_empty_seg_are_warnings(tmp_path):
    write_brats_case(tmp_path, "brats2021", 1, images={"t1": np.zeros(SHAPE)},
                     seg=np.zeros(SHAPE, np.uint8))
    summary = examine_case(_one(tmp_path))
    assert summary.problems == []
    assert any("BraTS2021_00001_t1.nii.gz: t1 is constant" in w for w in summary.warnings)
    assert any("segmentation is empty" in w for w in summary.warnings)
    assert summary.label_counts == {0: 120, 1: 0, 2: 0, 3: 0}

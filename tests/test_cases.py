"""Case discovery, validation and loading for every published layout.

The channel order and the label mapping are checked against file names and values written
out by hand here (not taken from the code under test): each file on disk gets its own value,
and the loaded array must hold, at each channel, the value of the file that the published
layout says is that modality.
"""

from __future__ import annotations

import numpy as np
import pytest
from datafiles import (
    AFFINE,
    SHAPE,
    example_seg,
    garbage,
    modality_volume,
    pattern,
    truncate,
    write_brats_case,
    write_msd_case,
)

from glioseg.data import cases as C
from glioseg.data import labels as L
from glioseg.data.nifti import save_volume

# Canonical channel order, written out: the order every array of the project uses.
CANONICAL = ("t1", "t1ce", "t2", "flair")

# File suffix of each channel, in canonical order, as the challenges publish them.
PUBLISHED_SUFFIX = {
    "brats2020": ("_t1", "_t1ce", "_t2", "_flair"),
    "brats2021": ("_t1", "_t1ce", "_t2", "_flair"),
    "brats2023": ("-t1n", "-t1c", "-t2w", "-t2f"),
}
SEG_SUFFIX = {"brats2020": "_seg", "brats2021": "_seg", "brats2023": "-seg"}

# (file label, internal label): 0 bg, 1 necrosis/NETC, 2 edema, 3 enhancing tumour.
LABEL_TABLE = {
    "brats2020": [(0, 0), (1, 1), (2, 2), (4, 3)],
    "brats2021": [(0, 0), (1, 1), (2, 2), (4, 3)],
    "brats2023": [(0, 0), (1, 1), (2, 2), (3, 3)],
    # MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    "msd": [(0, 0), (1, 2), (2, 1), (3, 3)],
}

BRATS_CASES = [
    ("brats2020", "BraTS20_Training_001", ".nii"),
    ("brats2020", "BraTS20_Training_002", ".nii.gz"),
    ("brats2021", "BraTS2021_00000", ".nii.gz"),
    ("brats2023", "BraTS-GLI-00000-000", ".nii.gz"),
    ("brats2023", "BraTS-SSA-00002-000", ".nii.gz"),
    ("brats2023", "BraTS-MEN-00004-000", ".nii.gz"),
    ("brats2023", "BraTS-MET-00001-000", ".nii.gz"),
    ("brats2023", "BraTS-PED-00012-000", ".nii.gz"),
]


def test_canonical_order_is_t1_t1ce_t2_flair():
    assert L.MODALITIES == CANONICAL
    assert C.MSD_CHANNELS == ("flair", "t1", "t1ce", "t2")


def _write_by_hand(folder, layout, cid, ext, shape=SHAPE, seg=None):
    """Each file on disk filled with 1000 * (its position in PUBLISHED_SUFFIX + 1) + index."""
    for k, suffix in enumerate(PUBLISHED_SUFFIX[layout]):
        save_volume(folder / cid / f"{cid}{suffix}{ext}", 1000.0 * (k + 1) + pattern(shape),
                    AFFINE, dtype=np.float32)
    if seg is not None:
        save_volume(folder / cid / f"{cid}{SEG_SUFFIX[layout]}{ext}", seg, AFFINE, dtype=np.uint8)


# ------------------------------------------------------------------ discovery, BraTS layouts


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_discovery_maps_each_published_file(tmp_path, layout, cid, ext):
    _write_by_hand(tmp_path, layout, cid, ext, seg=example_seg(layout))
    (case,) = C.discover(tmp_path)
    assert case.case_id == cid
    assert case.layout == layout
    expected = {m: f"{cid}{s}{ext}" for m, s in zip(CANONICAL, PUBLISHED_SUFFIX[layout],
                                                    strict=True)}
    assert {m: p.name for m, p in case.images.items()} == expected
    assert case.seg is not None and case.seg.name == f"{cid}{SEG_SUFFIX[layout]}{ext}"
    assert case.warnings == ()
    assert C.check_case(case) == []


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_channel_order_and_axes(tmp_path, layout, cid, ext):
    _write_by_hand(tmp_path, layout, cid, ext)
    data = C.load_case(C.discover(tmp_path / cid)[0])
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
    image = C.load_case(C.discover(tmp_path)[0]).image
    assert image[:, 0, 0, 0].tolist() == [10.0, 20.0, 30.0, 40.0]  # t1, t1ce, t2, flair


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_label_mapping(tmp_path, layout, cid, ext):
    seg = np.zeros(SHAPE, dtype=np.uint8)
    for x, (file_value, _) in enumerate(LABEL_TABLE[layout]):
        seg[x, : x + 1] = file_value  # x + 1 rows of 4 voxels: every label a different size
    _write_by_hand(tmp_path, layout, cid, ext, seg=seg)
    labels = C.load_case(C.discover(tmp_path)[0]).labels
    assert labels is not None and labels.dtype == np.uint8 and labels.shape == SHAPE
    for x, (file_value, internal) in enumerate(LABEL_TABLE[layout]):
        assert (labels[x, : x + 1] == internal).all(), (file_value, internal)
    assert (labels[len(LABEL_TABLE[layout]):] == 0).all()
    # slab x = 1, 2, 3 holds 2, 3, 4 rows of 4 voxels; the rest of the 120 voxels is background
    counts = C.examine_case(C.discover(tmp_path)[0]).label_counts
    assert counts == {0: 120 - 8 - 12 - 16, 1: 8, 2: 12, 3: 16}


def test_layouts_from_a_nested_archive_folder(tmp_path):
    """As the archives unpack: DATA/MICCAI_BraTS2020_TrainingData/<cases> + csv files."""
    archive = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in (3, 1, 2):
        write_brats_case(archive, "brats2020", i, ext=".nii")
    (archive / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\n")
    (archive / "survival_info.csv").write_text("Brats20ID,Age\n")
    ids = [c.case_id for c in C.discover(tmp_path)]
    assert ids == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert [c.case_id for c in C.discover(archive)] == ids
    single = C.discover(archive / "BraTS20_Training_002")
    assert [c.case_id for c in single] == ["BraTS20_Training_002"]
    assert single[0].images["t1ce"].name == "BraTS20_Training_002_t1ce.nii"


def test_training_and_validation_side_by_side(tmp_path):
    write_brats_case(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 1)
    write_brats_case(tmp_path / "MICCAI_BraTS2020_ValidationData", "brats2020", 1,
                     split="Validation", seg=False)
    train, val = C.discover(tmp_path)
    assert (train.case_id, val.case_id) == ("BraTS20_Training_001", "BraTS20_Validation_001")
    assert train.seg is not None and val.seg is None
    assert C.check_case(val) == []
    assert C.load_case(val).labels is None
    assert C.load_case(train, with_labels=False).labels is None


def test_case_355_misnamed_segmentation_is_accepted_with_warning(tmp_path):
    seg = example_seg("brats2020")
    folder = write_brats_case(tmp_path, "brats2020", 355, ext=".nii", seg=seg,
                              seg_name="W39_1998.09.19_Segm.nii")
    (folder / "._W39_1998.09.19_Segm.nii").write_bytes(b"junk")  # macOS fork, sorts first
    (case,) = C.discover(tmp_path)
    assert case.seg is not None and case.seg.name == "W39_1998.09.19_Segm.nii"
    assert len(case.warnings) == 1 and "W39_1998.09.19_Segm.nii" in case.warnings[0]
    summary = C.examine_case(case)
    assert summary.problems == [] and summary.ok
    assert summary.warnings == list(case.warnings)
    assert C.load_case(case).labels[3].tolist() == np.full(SHAPE[1:], 3).tolist()  # 4 -> 3


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
    data = C.load_case(C.discover(tmp_path)[0])
    for k in range(4):
        # stored int16 = the array given; value = slope * stored + intercept
        np.testing.assert_array_equal(data.image[k], 2.0 * (ramp + 100 * (k + 1)) + 0.5)
    assert data.labels[1, 2, 3] == 3 and int(data.labels.sum()) == 3


# ------------------------------------------------------------------ discovery, MSD


def test_msd_discovery_channels_and_labels(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    image = np.stack([np.full(SHAPE, 10.0 * (c + 1)) for c in range(4)], axis=-1)
    image[5, 4, 3, :] = [-1.0, -2.0, -3.0, -4.0]  # one voxel to check the spatial axes
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[0, :1] = 1  # edema, 4 voxels
    seg[1, :2] = 2  # non-enhancing, 8 voxels
    seg[2, :3] = 3  # enhancing, 12 voxels
    write_msd_case(task, "BRATS_002", image=image, seg=seg)
    write_msd_case(task, "BRATS_001")
    write_msd_case(task, "BRATS_485", split="Ts")
    (task / "dataset.json").write_text("{}")
    for root in (task, tmp_path):  # the task folder, or the folder it unpacked into
        cases = C.discover(root)
        assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_485"]
    c1, c2, ts = cases
    assert {c.layout for c in cases} == {"msd"}
    assert c2.images["t1"].name == "BRATS_002.nii.gz" and c2.images["t1"].parent.name == "imagesTr"
    assert c2.seg is not None and c2.seg.parent.name == "labelsTr"
    assert ts.seg is None and ts.images["flair"].parent.name == "imagesTs"
    data = C.load_case(c2)
    # channel 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w  ->  t1 = ch1, t1ce = ch2, t2 = ch3, flair = ch0
    assert data.image[:, 0, 0, 0].tolist() == [20.0, 30.0, 40.0, 10.0]
    assert data.image[:, 5, 4, 3].tolist() == [-2.0, -3.0, -4.0, -1.0]
    assert data.header.shape == SHAPE
    assert data.labels[0, :1].tolist() == np.full((1, 4), 2).tolist()  # edema -> 2
    assert data.labels[1, :2].tolist() == np.full((2, 4), 1).tolist()  # non-enhancing -> 1
    assert data.labels[2, :3].tolist() == np.full((3, 4), 3).tolist()  # enhancing -> 3
    assert int((data.labels > 0).sum()) == 24
    assert C.examine_case(c2).label_counts == {0: 96, 1: 8, 2: 4, 3: 12}
    for c in cases:
        assert C.check_case(c) == [], c.case_id
    assert C.load_case(ts).labels is None


# ------------------------------------------------------------------ folders without cases


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(C.CaseError, match="no cases found"):
        C.discover(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "BraTS20_Training_1").mkdir()  # not three digits: not a case
    with pytest.raises(C.CaseError, match="no cases found"):
        C.discover(tmp_path)
    with pytest.raises(C.CaseError, match="no such folder"):
        C.discover(tmp_path / "absent")


def test_duplicate_case_ids_are_an_error(tmp_path):
    write_brats_case(tmp_path / "copy1", "brats2021", 7)
    write_brats_case(tmp_path / "copy2", "brats2021", 7)
    with pytest.raises(C.CaseError, match="BraTS2021_00007 found twice"):
        C.discover(tmp_path)


# ------------------------------------------------------------------ bad inputs


def _one(tmp_path):
    (case,) = C.discover(tmp_path)
    return case


def _assert_problem(case, file_name, words, read_voxels=True):
    problems = C.check_case(case, read_voxels=read_voxels)
    hits = [p for p in problems if file_name in p and case.case_id in p]
    assert hits, problems
    assert any(all(w in p for w in words) for p in hits), problems
    with pytest.raises(C.CaseError, match=case.case_id):
        C.load_case(case)


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
    assert C.check_case(_one(tmp_path), read_voxels=False) == []  # headers alone cannot tell


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
    assert C.check_case(case, read_voxels=False) == []
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
    problems = C.check_case(_one(tmp_path))
    assert len(problems) == 4, problems
    assert "missing modality t1" in problems[0]
    assert "BraTS2021_00001_t2.nii.gz: 1 NaN/inf" in problems[1]
    assert "BraTS2021_00001_flair.nii.gz: not a readable NIfTI" in problems[2]
    assert "BraTS2021_00001_seg.nii.gz: unexpected label values [7]" in problems[3]


def test_constant_modality_and_empty_seg_are_warnings(tmp_path):
    write_brats_case(tmp_path, "brats2021", 1, images={"t1": np.zeros(SHAPE)},
                     seg=np.zeros(SHAPE, np.uint8))
    summary = C.examine_case(_one(tmp_path))
    assert summary.problems == []
    assert any("BraTS2021_00001_t1.nii.gz: t1 is constant" in w for w in summary.warnings)
    assert any("segmentation is empty" in w for w in summary.warnings)
    assert summary.label_counts == {0: 120, 1: 0, 2: 0, 3: 0}


def test_msd_split_folder_passed_directly(tmp_path):
    write_msd_case(tmp_path, "BRATS_001")
    write_msd_case(tmp_path, "BRATS_485", split="Ts")
    assert [c.case_id for c in C.discover(tmp_path / "imagesTs")] == ["BRATS_485"]
    (tr,) = C.discover(tmp_path / "imagesTr")
    assert tr.case_id == "BRATS_001" and tr.seg is not None and tr.seg.parent.name == "labelsTr"


def test_both_extensions_present_is_a_warning(tmp_path):
    folder = write_brats_case(tmp_path, "brats2020", 1, ext=".nii")
    save_volume(folder / "BraTS20_Training_001_t2.nii.gz", np.zeros(SHAPE), AFFINE)
    case = _one(tmp_path)
    assert case.images["t2"].name == "BraTS20_Training_001_t2.nii.gz"
    assert any("BraTS20_Training_001_t2.nii.gz and BraTS20_Training_001_t2.nii" in w
               for w in case.warnings)


def test_loose_files_get_a_hint(tmp_path):
    save_volume(tmp_path / "BraTS2021_00000_t1.nii.gz", np.zeros(SHAPE), AFFINE)
    with pytest.raises(C.CaseError, match="1 NIfTI files lie directly in it"):
        C.discover(tmp_path)

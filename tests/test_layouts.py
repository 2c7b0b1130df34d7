"""``glioseg.data.layouts``: discovery of cases in every published layout, and their names.

File names are written out by hand here (``datafiles.PUBLISHED_SUFFIX``), not taken from the
code under test; a discovered case is then read (``glioseg.data.cases``) to show that each
file went to the right place.
"""

from __future__ import annotations

import numpy as np
import pytest
from datafiles import (
    AFFINE,
    BRATS_CASES,
    CANONICAL,
    PUBLISHED_SEG_SUFFIX,
    PUBLISHED_SUFFIX,
    SHAPE,
    example_seg,
    write_brats_case,
    write_by_hand,
    write_msd_case,
)

from glioseg.data import labels as L
from glioseg.data.cases import check_case, examine_case, load_case
from glioseg.data.layouts import (
    MSD_CHANNELS,
    CaseError,
    case_file_name,
    case_id_for,
    discover,
)
from glioseg.data.nifti import save_volume


def test_canonical_order_is_t1_t1ce_t2_flair():
    assert L.MODALITIES == CANONICAL
    assert MSD_CHANNELS == ("flair", "t1", "t1ce", "t2")


@pytest.mark.parametrize("layout, cid, ext", BRATS_CASES)
def test_discovery_maps_each_published_file(tmp_path, layout, cid, ext):
    write_by_hand(tmp_path, layout, cid, ext, seg=example_seg(layout))
    (case,) = discover(tmp_path)
    assert case.case_id == cid
    assert case.layout == layout
    expected = {m: f"{cid}{s}{ext}" for m, s in zip(CANONICAL, PUBLISHED_SUFFIX[layout],
                                                    strict=True)}
    assert {m: p.name for m, p in case.images.items()} == expected
    assert case.seg is not None and case.seg.name == f"{cid}{PUBLISHED_SEG_SUFFIX[layout]}{ext}"
    assert case.warnings == ()
    assert check_case(case) == []


def test_layouts_from_a_nested_archive_folder(tmp_path):
    """As the archives unpack: DATA/MICCAI_BraTS2020_TrainingData/<cases> + csv files."""
    archive = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in (3, 1, 2):
        write_brats_case(archive, "brats2020", i, ext=".nii")
    (archive / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\n")
    (archive / "survival_info.csv").write_text("Brats20ID,Age\n")
    ids = [c.case_id for c in discover(tmp_path)]
    assert ids == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert [c.case_id for c in discover(archive)] == ids
    single = discover(archive / "BraTS20_Training_002")
    assert [c.case_id for c in single] == ["BraTS20_Training_002"]
    assert single[0].images["t1ce"].name == "BraTS20_Training_002_t1ce.nii"


def test_training_and_validation_side_by_side(tmp_path):
    write_brats_case(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 1)
    write_brats_case(tmp_path / "MICCAI_BraTS2020_ValidationData", "brats2020", 1,
                     split="Validation", seg=False)
    train, val = discover(tmp_path)
    assert (train.case_id, val.case_id) == ("BraTS20_Training_001", "BraTS20_Validation_001")
    assert train.seg is not None and val.seg is None
    assert check_case(val) == []
    assert load_case(val).labels is None
    assert load_case(train, with_labels=False).labels is None


def test_case_355_misnamed_segmentation_is_accepted_with_warning(tmp_path):
    seg = example_seg("brats2020")
    folder = write_brats_case(tmp_path, "brats2020", 355, ext=".nii", seg=seg,
                              seg_name="W39_1998.09.19_Segm.nii")
    (folder / "._W39_1998.09.19_Segm.nii").write_bytes(b"junk")  # macOS fork, sorts first
    (case,) = discover(tmp_path)
    assert case.seg is not None and case.seg.name == "W39_1998.09.19_Segm.nii"
    assert len(case.warnings) == 1 and "W39_1998.09.19_Segm.nii" in case.warnings[0]
    summary = examine_case(case)
    assert summary.problems == [] and summary.ok
    assert summary.warnings == list(case.warnings)
    assert load_case(case).labels[3].tolist() == np.full(SHAPE[1:], 3).tolist()  # 4 -> 3


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
        cases = discover(root)
        assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_485"]
    c1, c2, ts = cases
    assert {c.layout for c in cases} == {"msd"}
    assert c2.images["t1"].name == "BRATS_002.nii.gz" and c2.images["t1"].parent.name == "imagesTr"
    assert c2.seg is not None and c2.seg.parent.name == "labelsTr"
    assert ts.seg is None and ts.images["flair"].parent.name == "imagesTs"
    data = load_case(c2)
    # channel 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w  ->  t1 = ch1, t1ce = ch2, t2 = ch3, flair = ch0
    assert data.image[:, 0, 0, 0].tolist() == [20.0, 30.0, 40.0, 10.0]
    assert data.image[:, 5, 4, 3].tolist() == [-2.0, -3.0, -4.0, -1.0]
    assert data.header.shape == SHAPE
    assert data.labels[0, :1].tolist() == np.full((1, 4), 2).tolist()  # edema -> 2
    assert data.labels[1, :2].tolist() == np.full((2, 4), 1).tolist()  # non-enhancing -> 1
    assert data.labels[2, :3].tolist() == np.full((3, 4), 3).tolist()  # enhancing -> 3
    assert int((data.labels > 0).sum()) == 24
    assert examine_case(c2).label_counts == {0: 96, 1: 8, 2: 4, 3: 12}
    for c in cases:
        assert check_case(c) == [], c.case_id
    assert load_case(ts).labels is None


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(CaseError, match="no cases found"):
        discover(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "BraTS20_Training_1").mkdir()  # not three digits: not a case
    with pytest.raises(CaseError, match="no cases found"):
        discover(tmp_path)
    with pytest.raises(CaseError, match="no such folder"):
        discover(tmp_path / "absent")
    (tmp_path / "notes" / "t1.nii.gz").write_bytes(b"")
    with pytest.raises(CaseError, match=r"t1\.nii\.gz is a file; give the data folder or one "
                                        r"case folder \(e\.g\. .*notes\)"):
        discover(tmp_path / "notes" / "t1.nii.gz")


def test_duplicate_case_ids_are_an_error(tmp_path):
    write_brats_case(tmp_path / "copy1", "brats2021", 7)
    write_brats_case(tmp_path / "copy2", "brats2021", 7)
    with pytest.raises(CaseError, match="BraTS2021_00007 found twice"):
        discover(tmp_path)


def test_msd_split_folder_passed_directly(tmp_path):
    write_msd_case(tmp_path, "BRATS_001")
    write_msd_case(tmp_path, "BRATS_485", split="Ts")
    assert [c.case_id for c in discover(tmp_path / "imagesTs")] == ["BRATS_485"]
    (tr,) = discover(tmp_path / "imagesTr")
    assert tr.case_id == "BRATS_001" and tr.seg is not None and tr.seg.parent.name == "labelsTr"


def test_both_extensions_present_is_a_warning(tmp_path):
    folder = write_brats_case(tmp_path, "brats2020", 1, ext=".nii")
    save_volume(folder / "BraTS20_Training_001_t2.nii.gz", np.zeros(SHAPE), AFFINE)
    (case,) = discover(tmp_path)
    assert case.images["t2"].name == "BraTS20_Training_001_t2.nii.gz"
    assert any("BraTS20_Training_001_t2.nii.gz and BraTS20_Training_001_t2.nii" in w
               for w in case.warnings)


def test_unrecognised_files_in_a_case_folder_are_named(tmp_path):
    """A misspelt sequence, another case's file and a stray copy of the segmentation are
    named in a warning; the case's own files (both extensions of one) are not."""
    a = write_brats_case(tmp_path, "brats2021", 1, skip=("t2",))
    save_volume(a / "BraTS2021_00001_T2w.nii.gz", np.zeros(SHAPE), AFFINE)
    b = write_brats_case(tmp_path, "brats2021", 2, ext=".nii")
    save_volume(b / "BraTS2021_00002_t1.nii.gz", np.zeros(SHAPE), AFFINE)
    save_volume(b / "BraTS2021_00009_flair.nii.gz", np.zeros(SHAPE), AFFINE)
    save_volume(b / "BraTS2021_00002_seg_old.nii.gz", np.zeros(SHAPE), AFFINE)
    (b / "notes.txt").write_text("not an image")
    (b / "._BraTS2021_00002_t2.nii").write_bytes(b"macOS fork")
    c = write_brats_case(tmp_path, "brats2023", 3)
    three, one, two = discover(tmp_path)  # BraTS-GLI-... sorts first
    assert one.unrecognised == ("BraTS2021_00001_T2w.nii.gz",)
    assert "t2" in one.missing
    assert ("BraTS2021_00001: unrecognised files in the case folder: "
            "BraTS2021_00001_T2w.nii.gz (expected BraTS2021_00001_{t1,t1ce,t2,flair,seg}"
            ".nii.gz); rename or remove them") in one.warnings
    assert two.unrecognised == ("BraTS2021_00002_seg_old.nii.gz", "BraTS2021_00009_flair.nii.gz")
    assert sum("unrecognised" in w for w in two.warnings) == 1
    assert three.case_id == c.name and three.unrecognised == () and three.warnings == ()
    assert set(two.warnings) <= set(examine_case(two, read_voxels=False).warnings)
    # the missing sequence's problem names what was found instead
    assert any(p.startswith("BraTS2021_00001: missing modality t2 (") and
               p.endswith("; unrecognised: BraTS2021_00001_T2w.nii.gz)")
               for p in examine_case(one, read_voxels=False).problems)


def test_loose_files_get_a_hint(tmp_path):
    save_volume(tmp_path / "BraTS2021_00000_t1.nii.gz", np.zeros(SHAPE), AFFINE)
    with pytest.raises(CaseError, match="1 NIfTI files lie directly in it"):
        discover(tmp_path)


# ------------------------------------------------------------------ names of the published files


@pytest.mark.parametrize("layout, index, site, cid", [
    ("brats2020", 5, "GLI", "BraTS20_Training_005"),
    ("brats2021", 12, "GLI", "BraTS2021_00012"),
    ("brats2023", 7, "SSA", "BraTS-SSA-00007-000"),
])
def test_case_ids_and_file_names_as_published(layout, index, site, cid):
    assert case_id_for(layout, index, site) == cid
    for modality, suffix in zip(CANONICAL, PUBLISHED_SUFFIX[layout], strict=True):
        assert case_file_name(layout, cid, modality) == f"{cid}{suffix}.nii.gz"
    assert case_file_name(layout, cid, "seg", ext=".nii") == \
        f"{cid}{PUBLISHED_SEG_SUFFIX[layout]}.nii"


def test_case_id_of_an_unknown_layout_is_an_error():
    with pytest.raises(CaseError, match="unknown layout 'msd'"):
        case_id_for("msd", 1)


def test_a_declared_label_scheme_overrides_the_layouts(tmp_path):
    write_brats_case(tmp_path / "d", "brats2021", 1)
    write_brats_case(tmp_path / "d", "brats2021", 2)
    (plain,) = {c.label_scheme for c in discover(tmp_path / "d")}
    assert plain == "brats2021"
    cases = discover(tmp_path / "d", label_scheme="brats2023")
    assert [(c.layout, c.label_scheme, c.declared_labels) for c in cases] == [
        ("brats2021", "brats2023", "brats2023")] * 2
    with pytest.raises(L.LabelError, match="unknown label scheme 'nnunet'"):
        discover(tmp_path / "nowhere", label_scheme="nnunet")  # before the folder is read

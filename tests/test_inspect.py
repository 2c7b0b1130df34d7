"""``glioseg inspect`` end to end through the Typer app, on folders of good and bad cases."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datafiles import (
    AFFINE,
    SHAPE,
    example_seg,
    garbage,
    modality_volume,
    truncate,
    write_brats_case,
    write_msd_case,
)
from typer.testing import CliRunner

from glioseg.cli import app

runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, ["inspect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def _lines_naming(output: str, *words: str) -> list[str]:
    """Lines holding every word; a first word ``problem``/``warning`` must start the line."""
    lines = output.splitlines()
    if words and words[0] in ("problem", "warning"):
        lines = [ln for ln in lines if ln.startswith(words[0] + " ")]
    return [ln for ln in lines if all(w in ln for w in words)]


def _seg_with_counts(values: tuple[int, int, int]) -> np.ndarray:
    """File labels ``values[0]`` x 3 voxels, ``values[1]`` x 5, ``values[2]`` x 7."""
    seg = np.zeros(SHAPE, dtype=np.uint8).reshape(-1)
    seg[0:3] = values[0]
    seg[3:8] = values[1]
    seg[8:15] = values[2]
    return seg.reshape(SHAPE)


@pytest.fixture
def mixed(tmp_path):
    """A BraTS 2021 folder: 2 good cases, case 355-style warning, and one of each bad kind."""
    root = tmp_path / "data"
    write_brats_case(root, "brats2021", 1, seg=_seg_with_counts((1, 2, 4)))
    write_brats_case(root, "brats2021", 2)
    write_brats_case(root, "brats2021", 3, seg_name="W39_1998.09.19_Segm.nii")
    write_brats_case(root, "brats2021", 10, skip=["t1ce"])
    write_brats_case(root, "brats2021", 11, images={"t2": np.zeros((6, 5, 3))})
    shifted = AFFINE.copy()
    shifted[2, 3] = 5.0
    write_brats_case(root, "brats2021", 12, affines={"flair": shifted})
    seg = example_seg("brats2021")
    seg[5, 1, 1] = 3
    write_brats_case(root, "brats2021", 13, seg=seg)
    t1 = modality_volume("t1")
    t1[1, 1, 1] = np.nan
    write_brats_case(root, "brats2021", 14, images={"t1": t1})
    garbage(write_brats_case(root, "brats2021", 15) / "BraTS2021_00015_t2.nii.gz")
    rng = np.random.default_rng(1)
    big = (24, 20, 16)
    folder = write_brats_case(root, "brats2021", 16, shape=big,
                              images={m: rng.normal(size=big) for m in ("t1", "t1ce", "t2", "flair")},
                              seg=np.zeros(big, np.uint8))
    truncate(folder / "BraTS2021_00016_t1.nii.gz")
    write_brats_case(root, "brats2021", 17, images={"flair": np.zeros((*SHAPE, 2))})
    return root


BAD = {
    "BraTS2021_00010": ("BraTS2021_00010_t1ce.nii", "missing modality t1ce"),
    "BraTS2021_00011": ("BraTS2021_00011_t2.nii.gz", "shape (6, 5, 3) differs"),
    "BraTS2021_00012": ("BraTS2021_00012_flair.nii.gz", "affine differs"),
    "BraTS2021_00013": ("BraTS2021_00013_seg.nii.gz", "unexpected label values [3]"),
    "BraTS2021_00014": ("BraTS2021_00014_t1.nii.gz", "1 NaN/inf voxels"),
    "BraTS2021_00015": ("BraTS2021_00015_t2.nii.gz", "not a readable NIfTI"),
    "BraTS2021_00016": ("BraTS2021_00016_t1.nii.gz", "truncated or corrupt"),
    "BraTS2021_00017": ("BraTS2021_00017_flair.nii.gz", "expected a 3D volume"),
}
GOOD = ("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003")


def test_mixed_folder_names_every_bad_case(mixed):
    result = _invoke(mixed)
    out = result.output
    assert result.exit_code == 1, out
    for cid, (file_name, what) in BAD.items():
        assert _lines_naming(out, "problem", cid, file_name, what), (cid, out)
        (row,) = [ln for ln in out.splitlines() if ln.startswith("│ " + cid)]
        assert "BAD" in row
    for cid in GOOD:
        (row,) = [ln for ln in out.splitlines() if ln.startswith("│ " + cid)]
        assert "brats2021" in row and "BAD" not in row and "6x5x4" in row and "LPS" in row
    assert len(_lines_naming(out, "problem")) == len(BAD)
    # case 3: a warning, not a failure
    assert _lines_naming(out, "warning", "BraTS2021_00003", "W39_1998.09.19_Segm.nii")
    assert "warning" in _lines_naming(out, "│ BraTS2021_00003")[0]
    # label voxel counts of case 1 (file 1 x3 -> NCR, 2 x5 -> ED, 4 x7 -> ET)
    assert "NCR 3 ED 5 ET 7" in _lines_naming(out, "│ BraTS2021_00001")[0]
    assert re.search(r"11 cases \(brats2021\): 3 usable \(1 with warnings\), 8 bad", out), out


def test_quick_mode_reads_headers_only(mixed):
    out = _invoke(mixed, "--quick").output
    # header problems are still found ...
    for cid in ("BraTS2021_00010", "BraTS2021_00011", "BraTS2021_00012", "BraTS2021_00015",
                "BraTS2021_00017"):
        file_name, what = BAD[cid]
        assert _lines_naming(out, "problem", cid, file_name, what), (cid, out)
    # ... voxel problems are not
    for cid in ("BraTS2021_00013", "BraTS2021_00014", "BraTS2021_00016"):
        assert not _lines_naming(out, "problem", cid), out
    assert "--quick" in out


def test_all_good_folder_exits_zero(tmp_path):
    write_brats_case(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 1, ext=".nii")
    write_brats_case(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 355, ext=".nii",
                     seg_name="W39_1998.09.19_Segm.nii")
    write_brats_case(tmp_path / "MICCAI_BraTS2020_ValidationData", "brats2020", 1,
                     split="Validation", seg=False)
    result = _invoke(tmp_path)
    assert result.exit_code == 0, result.output
    for cid in ("BraTS20_Training_001", "BraTS20_Training_355", "BraTS20_Validation_001"):
        assert _lines_naming(result.output, "│ " + cid), result.output
    assert "no seg" in _lines_naming(result.output, "│ BraTS20_Validation_001")[0]
    assert not _lines_naming(result.output, "problem")
    assert "3 cases (brats2020): 3 usable (1 with warnings), 0 bad" in result.output


def test_unrecognised_files_are_a_warning(tmp_path):
    from glioseg.data.nifti import save_volume

    folder = write_brats_case(tmp_path, "brats2021", 1, skip=("t2",))
    save_volume(folder / "BraTS2021_00001_T2w.nii.gz", modality_volume("t2", SHAPE), AFFINE)
    result = _invoke(tmp_path, "--quick")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "problem BraTS2021_00001: missing modality t2" in out
    assert ("warning BraTS2021_00001: unrecognised files in the case folder: "
            "BraTS2021_00001_T2w.nii.gz") in out


def test_et_as_3_in_brats2021_cases_gets_a_hint(tmp_path):
    seg = example_seg("brats2021")
    write_brats_case(tmp_path, "brats2021", 1, seg=np.where(seg == 4, 3, seg).astype(np.uint8))
    result = _invoke(tmp_path)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "unexpected label values [3] for the brats2021 scheme" in out
    assert "hint: 3 is ET in the BraTS 2023 / nnU-Net scheme" in out


def test_msd_and_brats2023_folders(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    # MSD file labels 1 edema x3, 2 non-enhancing x5, 3 enhancing x7
    write_msd_case(task, "BRATS_001", seg=_seg_with_counts((1, 2, 3)))
    write_msd_case(task, "BRATS_485", split="Ts")
    result = _invoke(tmp_path)
    assert result.exit_code == 0, result.output
    assert "NCR 5 ED 3 ET 7" in _lines_naming(result.output, "│ BRATS_001")[0]
    assert "._BRATS_001" not in result.output

    seg = example_seg("brats2023")
    seg[5, 0, 0] = 4
    for site in ("GLI", "SSA", "MEN", "MET", "PED"):
        write_brats_case(tmp_path / "b23", "brats2023", 1, site=site)
    write_brats_case(tmp_path / "b23", "brats2023", 2, site="PED", seg=seg)
    result = _invoke(tmp_path / "b23")
    assert result.exit_code == 1
    assert _lines_naming(result.output, "problem", "BraTS-PED-00002-000",
                         "BraTS-PED-00002-000-seg.nii.gz", "unexpected label values [4]")
    for site in ("GLI", "SSA", "MEN", "MET", "PED"):
        assert "ok" in _lines_naming(result.output, f"│ BraTS-{site}-00001-000")[0]


def test_folder_without_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _invoke(tmp_path / "empty")
    assert result.exit_code == 1
    assert "no cases found" in result.output
    result = _invoke(tmp_path / "absent")
    assert result.exit_code == 1
    assert "no such folder" in result.output


def test_an_unexpected_error_stays_with_its_case(tmp_path, monkeypatch):
    from glioseg.data import inspect as inspect_module

    for i in (1, 2, 3):
        write_brats_case(tmp_path, "brats2021", i)
    real = inspect_module.examine_case

    def flaky(case, **kwargs):
        if case.case_id == "BraTS2021_00002":
            raise MemoryError("out of memory")
        return real(case, **kwargs)

    monkeypatch.setattr(inspect_module, "examine_case", flaky)
    result = _invoke(tmp_path)
    assert result.exit_code == 1
    assert _lines_naming(result.output, "problem", "BraTS2021_00002", "MemoryError")
    for cid in ("BraTS2021_00001", "BraTS2021_00003"):
        assert "ok" in _lines_naming(result.output, "│ " + cid)[0]


def test_labels_declared_in_the_2023_scheme(tmp_path):
    """BraTS 2021 names with nnU-Net's 0/1/2/3 labels: refused with a hint naming --labels;
    declared with --labels brats2023, every case is ok with the counts of the 0/1/2/4 files."""
    seg = _seg_with_counts((1, 2, 4))
    for i in (1, 2):
        write_brats_case(tmp_path / "nn", "brats2021", i,
                         seg=np.where(seg == 4, 3, seg).astype(np.uint8))
    write_brats_case(tmp_path / "std", "brats2021", 1, seg=seg)
    refused = _invoke(tmp_path / "nn")
    assert refused.exit_code == 1
    assert "or declare the scheme: --labels brats2023" in " ".join(refused.output.split())
    declared = _invoke(tmp_path / "nn", "--labels", "brats2023")
    assert declared.exit_code == 0, declared.output
    rows = _lines_naming(declared.output, "BraTS2021_00001")
    assert len(rows) == 1 and "NCR 3 ED 5 ET 7" in rows[0] and "ok" in rows[0]
    assert "2 cases (brats2021; labels read as brats2023): 2 usable" in declared.output
    assert "hint" not in declared.output
    std = _lines_naming(_invoke(tmp_path / "std").output, "BraTS2021_00001")
    assert std == rows
    wrong = _invoke(tmp_path / "std", "--labels", "brats2023")  # a 4 is no 2023 label
    assert wrong.exit_code == 1
    assert _lines_naming(wrong.output, "problem", "unexpected label values [4] for the "
                         "brats2023 scheme")
    unknown = _invoke(tmp_path / "nn", "--labels", "nnunet")
    assert unknown.exit_code == 1
    assert "--labels nnunet: unknown label scheme; known: brats2020" in unknown.output

"""``glioseg.data.synthetic.cohort``: cohorts written in each published layout, the same bytes
from the same seed, resume, the marker, and the ``glioseg synth`` command.

Expected values come from the BraTS conventions (names, affine, labels) written out here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from glioseg.data import cases as C
from glioseg.data import labels as L
from glioseg.data.nifti import load_volume
from glioseg.data.synthetic.cohort import MARKER, write_cohort
from glioseg.data.synthetic.grid import grid_affine
from glioseg.data.synthetic.params import CaseParams, draw_case


def test_cohort_files_header_and_labels(synth_cohort):
    names = [p.name for p in synth_cohort]
    assert names == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    for folder in synth_cohort:
        cid = folder.name
        files = sorted(p.name for p in folder.glob("*.nii.gz"))
        assert files == sorted(f"{cid}_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2"))
        seg, hdr = load_volume(folder / f"{cid}_seg.nii.gz", dtype=None)
        assert hdr.shape == (120, 120, 78)
        assert hdr.orientation == ("L", "P", "S")
        np.testing.assert_allclose(hdr.affine, grid_affine(2.0))
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        t1, _ = load_volume(folder / f"{cid}_t1.nii.gz", dtype=None)
        assert t1.dtype == np.int16
    cases = C.discover(synth_cohort[0].parent)
    assert [c.case_id for c in cases] == names
    for case in cases:
        assert C.check_case(case) == []


@pytest.mark.parametrize("layout, expected", [
    ("brats2020", ["BraTS20_Training_005", "BraTS20_Training_006"]),
    ("brats2023", ["BraTS-GLI-00005-000", "BraTS-GLI-00006-000"]),
])
def test_other_layouts_are_discovered_and_valid(tmp_path, layout, expected):
    paths = write_cohort(tmp_path, n_cases=2, layout=layout, seed=3, spacing=6.0, start=5)
    assert [p.name for p in paths] == expected
    cases = C.discover(tmp_path)
    assert [c.case_id for c in cases] == expected
    for case in cases:
        assert case.layout == layout
        assert C.check_case(case) == []
        data = C.load_case(case)
        assert data.image.shape == (4, 40, 40, 26)
    if layout == "brats2023":
        assert (tmp_path / expected[0] / f"{expected[0]}-t2f.nii.gz").is_file()
        seg, _ = load_volume(tmp_path / expected[0] / f"{expected[0]}-seg.nii.gz", dtype=None)
        assert 4 not in np.unique(seg)


def test_target_site_uses_its_brats2023_tag(tmp_path):
    (p,) = write_cohort(tmp_path, n_cases=1, layout="brats2023", site="target", seed=1,
                          spacing=6.0)
    assert p.name == "BraTS-SSA-00000-000"


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_cohort(tmp_path / "a", n_cases=2, seed=5, spacing=5.0)
    b = write_cohort(tmp_path / "b", n_cases=2, seed=5, spacing=5.0, workers=2)
    c = write_cohort(tmp_path / "c", n_cases=2, seed=6, spacing=5.0)
    for pa, pb, pc in zip(a, b, c, strict=True):
        for f in sorted(pa.glob("*.nii.gz")):
            assert f.read_bytes() == (pb / f.name).read_bytes(), f.name
            assert f.read_bytes() != (pc / f.name).read_bytes(), f.name


def test_resume_skips_complete_cases_and_refuses_foreign_ones(tmp_path):
    (p,) = write_cohort(tmp_path, n_cases=1, seed=2, spacing=6.0)
    f = p / f"{p.name}_t1.nii.gz"
    before = f.stat().st_mtime_ns
    write_cohort(tmp_path, n_cases=2, seed=2, spacing=6.0)
    assert f.stat().st_mtime_ns == before  # skipped, not rewritten
    assert (tmp_path / "BraTS2021_00001").is_dir()
    with pytest.raises(ValueError, match="different generator parameters"):
        write_cohort(tmp_path, n_cases=1, seed=3, spacing=6.0)
    (tmp_path / "other" / "BraTS2021_00000").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by the generator"):
        write_cohort(tmp_path / "other", n_cases=1, spacing=6.0)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("kwargs, match", [
    ({"site": "mars"}, "known: source, target"),
    ({"layout": "msd"}, "unknown layout"),
    ({"n_cases": 0}, "at least 1"),
    ({"spacing": 0.1}, "spacing"),
])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_cohort(tmp_path, **{"n_cases": 1, **kwargs})


def test_marker_records_parameters_and_volumes(synth_cohort):
    meta = json.loads((synth_cohort[0] / MARKER).read_text())
    assert meta["seed"] == 0 and meta["site"] == "source" and meta["spacing"] == 2.0
    seg, _ = load_volume(synth_cohort[0] / "BraTS2021_00000_seg.nii.gz", dtype=None)
    assert meta["stats"]["wt_ml"] == pytest.approx((seg > 0).sum() * 8 / 1000.0)


def test_marker_records_the_drawn_case_parameters(synth_cohort):
    """The marker holds the ``CaseParams`` the case was rendered from (JSON round trip)."""
    meta = json.loads((synth_cohort[0] / MARKER).read_text())
    params = CaseParams.from_dict(meta["params"])
    assert params == CaseParams.from_dict(json.loads(json.dumps(
        draw_case(0, 0, "source", 2.0).to_dict())))
    assert params.site == "source" and params.spacing == 2.0
    assert len(params.lesions) == meta["stats"]["n_lesions"]


# ------------------------------------------------------------------ through the command line

BRATS_AFFINE_BY_HAND = np.array(
    [[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
)  # BraTS / SRI24: LPS arrays, 1 mm


@pytest.mark.parametrize("layout, ids, scheme", [
    ("brats2020", ["BraTS20_Training_000", "BraTS20_Training_001"], "brats2020"),
    ("brats2021", ["BraTS2021_00000", "BraTS2021_00001"], "brats2021"),
    ("brats2023", ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"], "brats2023"),
])
def test_cli_synth_then_inspect_accepts_each_layout(tmp_path, layout, ids, scheme):
    from typer.testing import CliRunner

    from glioseg.cli import app

    runner = CliRunner()
    out = tmp_path / "cohort"
    res = runner.invoke(app, ["synth", str(out), "--cases", "2", "--layout", layout,
                              "--seed", "4", "--spacing", "6"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ids
    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert f"2 cases ({layout}): 2 usable (0 with warnings), 0 bad; 0 problems" in res.output
    for cid in ids:
        (row,) = [ln for ln in res.output.splitlines() if ln.startswith("│ " + cid)]
        assert "40x40x26" in row and "6x6x6" in row and "LPS" in row and "ok" in row
        seg_file = next(p for p in (out / cid).iterdir() if "seg" in p.name)
        seg, _ = load_volume(seg_file, dtype=None)
        # file labels of the layout's published scheme
        assert set(np.unique(seg).tolist()) <= set(L.get_scheme(scheme).allowed)


def test_one_case_on_the_1mm_brats_grid(tmp_path):
    """The default spacing writes the BraTS grid itself: 240 x 240 x 155 voxels of 1 mm."""
    (folder,) = write_cohort(tmp_path, n_cases=1, layout="brats2023", seed=9)
    cid = folder.name
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        data, hdr = load_volume(folder / f"{cid}-{suffix}.nii.gz", dtype=None)
        assert data.shape == (240, 240, 155), suffix
        assert hdr.spacing == (1.0, 1.0, 1.0) and hdr.orientation == ("L", "P", "S")
        np.testing.assert_array_equal(hdr.affine, BRATS_AFFINE_BY_HAND)
    assert set(np.unique(data).tolist()) <= {0, 1, 2, 3}  # the seg, 2023 scheme
    wt_ml = float((data > 0).sum()) / 1000.0  # 1 voxel = 1 uL
    assert 20.0 * 0.8 <= wt_ml <= 300.0 * 1.02
    (case,) = C.discover(tmp_path)
    assert C.check_case(case) == []

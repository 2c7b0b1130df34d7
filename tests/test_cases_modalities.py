"""A site with fewer sequences: a T2+T1-only cohort (files deleted from a synthetic cohort)
is refused by default with a message naming the case and the missing file, inspected and
preprocessed with ``--modalities t2,t1``, and its cache holds the right channels (compared
with the NIfTI files read by nibabel and z-scored by hand), marked by name; training refuses a
sequence the cache lacks."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datafiles import MSD_ORDER, msd_image, write_msd_case
from typer.testing import CliRunner

from glioseg.cli import app
from glioseg.data import labels as L
from glioseg.data.cases import CaseError, check_case, discover, load_case
from glioseg.preprocess import cache as PC
from glioseg.preprocess.run import PreprocessFailed, preprocess_dir
from glioseg.train import config as C
from glioseg.train.cases import select_cases

runner = CliRunner()
DROPPED = ("t1ce", "flair")


@pytest.fixture(scope="module")
def t2_t1_cohort(synth_cohort: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cases of the session's synthetic cohort with their T1ce and FLAIR files deleted."""
    root = tmp_path_factory.mktemp("t2_t1") / "data"
    for case in synth_cohort[:2]:
        shutil.copytree(case, root / case.name)
        for mod in DROPPED:
            (root / case.name / f"{case.name}_{mod}.nii.gz").unlink()
    return root


@pytest.fixture(scope="module")
def t2_t1_cache(t2_t1_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t2_t1_cache") / "cache"
    result = runner.invoke(app, ["preprocess", str(t2_t1_cohort), "-o", str(out),
                                 "--modalities", "t2,t1"])
    assert result.exit_code == 0, result.output
    return out


def test_parse_modalities_names_and_errors():
    assert L.parse_modalities("t2,t1") == ("t2", "t1")
    assert L.parse_modalities(" T2W , t1n,T1Gd,FLAIR") == ("t2", "t1", "t1ce", "flair")
    assert L.parse_modalities(["t2f", "t1c"]) == ("flair", "t1ce")
    with pytest.raises(L.LabelError, match="unknown modality 'dwi'"):
        L.parse_modalities("t2,dwi")
    with pytest.raises(L.LabelError, match="t2 named twice"):
        L.parse_modalities("t2,t2w")
    with pytest.raises(L.LabelError, match="no modality"):
        L.parse_modalities(" , ")


def test_without_modalities_each_case_names_its_missing_files(t2_t1_cohort: Path,
                                                              tmp_path: Path):
    result = runner.invoke(app, ["inspect", str(t2_t1_cohort)])
    assert result.exit_code == 1
    for case in discover(t2_t1_cohort):
        for mod in DROPPED:
            want = f"{case.case_id}: missing modality {mod} (no {case.case_id}_{mod}.nii[.gz]"
            assert any(want in ln for ln in result.output.splitlines()), result.output
    assert "--modalities" in result.output  # the hint
    with pytest.raises(PreprocessFailed) as err:
        preprocess_dir(t2_t1_cohort, tmp_path / "cache")
    for case in discover(t2_t1_cohort):
        assert f"{case.case_id}: missing modality t1ce (no {case.case_id}_t1ce.nii[.gz]" \
            in str(err.value)
    assert "--modalities" in str(err.value)
    # the same (still empty) output folder then takes the run with the sequences named
    assert len(preprocess_dir(t2_t1_cohort, tmp_path / "cache", modalities="t2,t1")) == 2
    with pytest.raises(CaseError, match="missing modality t1ce .*; .*missing modality flair"):
        load_case(discover(t2_t1_cohort)[0])


def test_inspect_with_modalities_accepts_the_cohort(t2_t1_cohort: Path):
    result = runner.invoke(app, ["inspect", str(t2_t1_cohort), "--modalities", "t2,t1"])
    assert result.exit_code == 0, result.output
    assert "2 usable" in result.output and "0 bad" in result.output
    rows = [ln for ln in result.output.splitlines() if "BraTS2021_" in ln]
    assert len(rows) == 2 and all("t1 t2 seg" in r for r in rows)
    bad = runner.invoke(app, ["inspect", str(t2_t1_cohort), "--modalities", "t2,dwi"])
    assert bad.exit_code == 1 and "unknown modality 'dwi'" in bad.output


def test_unused_sequences_present_are_ignored_and_listed(synth_cohort: list[Path]):
    case = discover(synth_cohort[0])[0]
    assert check_case(case, modalities="t2,t1") == []
    result = runner.invoke(app, ["inspect", str(synth_cohort[0]), "--modalities", "t1,t2"])
    assert result.exit_code == 0 and "(t1ce flair unused)" in result.output


def _by_hand(case_dir: Path, mods: tuple[str, ...]) -> tuple[np.ndarray, list[list[int]]]:
    """Reference cache image of ``mods`` from the NIfTI files: nibabel, numpy, by hand."""
    vols = {m: np.asanyarray(nib.load(case_dir / f"{case_dir.name}_{m}.nii.gz").dataobj)
            .astype(np.float64) for m in mods}
    brain = np.zeros(next(iter(vols.values())).shape, bool)
    for v in vols.values():
        brain |= v != 0
    idx = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    bbox = [[int(i[0]), int(i[-1]) + 1] for i in idx]
    sl = tuple(slice(a, b) for a, b in bbox)
    out = np.zeros((4, *brain[sl].shape), np.float32)
    for m, v in vols.items():
        vals = v[sl][brain[sl]]
        ch = np.zeros(brain[sl].shape)
        ch[brain[sl]] = (vals - vals.mean()) / vals.std()
        out[L.MODALITIES.index(m)] = ch
    return out, bbox


def test_cache_holds_the_right_channels_marked_by_name(t2_t1_cohort: Path, t2_t1_cache: Path):
    info = json.loads((t2_t1_cache / "dataset.json").read_text())
    assert info["selected_modalities"] == ["t1", "t2"]
    assert info["modalities"] == list(L.MODALITIES)
    cases = PC.open_cache(t2_t1_cache)
    assert len(cases) == 2
    for c in cases:
        assert c.modalities == ("t1", "t2")
        assert json.loads((c.path / "meta.json").read_text())["modalities"] == ["t1", "t2"]
        ref, bbox = _by_hand(t2_t1_cohort / c.case_id, ("t1", "t2"))
        assert c.meta["bbox"] == bbox
        np.testing.assert_allclose(np.asarray(c.image), ref, atol=2e-5)
        for m in DROPPED:
            assert not np.asarray(c.image[L.MODALITIES.index(m)]).any()


def test_same_channels_as_the_full_case_with_unused_sequences(synth_cohort: list[Path],
                                                             t2_t1_cache: Path,
                                                             tmp_path: Path):
    out = tmp_path / "full"
    preprocess_dir(synth_cohort[0].parent, out, modalities=["t1", "t2"])
    full = {c.case_id: c for c in PC.open_cache(out)}
    for c in PC.open_cache(t2_t1_cache):
        np.testing.assert_array_equal(np.asarray(full[c.case_id].image), np.asarray(c.image))
        np.testing.assert_array_equal(np.asarray(full[c.case_id].labels), np.asarray(c.labels))


def test_cache_refuses_other_sequences_on_rerun(t2_t1_cohort: Path, t2_t1_cache: Path):
    with pytest.raises(PC.CacheError, match="built with the sequences t1,t2, not t1,t1ce"):
        preprocess_dir(t2_t1_cohort, t2_t1_cache)


def test_training_selects_by_name_and_refuses_a_missing_sequence(t2_t1_cache: Path):
    sets = [f"data.cache_dir={t2_t1_cache}", "data.n_val=1"]
    cfg = C.load_config("small", [*sets, "data.modalities=[t2,t1]"])
    cases = PC.open_cache(t2_t1_cache)
    train, val = select_cases(cfg, cases)
    assert len(train) == 1 and len(val) == 1
    img = np.asarray(val[0].image)
    cached = np.asarray(val[0].case.image)
    np.testing.assert_array_equal(img[0], cached[L.MODALITIES.index("t2")])
    np.testing.assert_array_equal(img[1], cached[L.MODALITIES.index("t1")])
    bad = C.load_config("small", [*sets, "data.modalities=[t1,t2,flair]"])
    with pytest.raises(PC.CacheError) as err:
        select_cases(bad, cases)
    for c in cases:
        assert f"{c.case_id} has no flair" in str(err.value)


def test_msd_case_reads_only_the_chosen_channels(tmp_path: Path):
    task = tmp_path / "Task01_BrainTumour"
    write_msd_case(task, "BRATS_001")
    case = discover(task)[0]
    data = load_case(case, modalities="flair,t1ce")
    assert data.modalities == ("t1ce", "flair")
    for m in L.MODALITIES:
        ch = data.image[L.MODALITIES.index(m)]
        if m in data.modalities:  # each channel of the 4D file as written, by name
            np.testing.assert_array_equal(ch, msd_image()[..., MSD_ORDER.index(m)])
        else:
            assert not ch.any()

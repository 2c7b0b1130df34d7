"""Post-processing chosen on validation cases: per-region size thresholds, on hand-made cases
where the right choice is known; the card records it and predict applies it."""

from __future__ import annotations

import numpy as np
import pytest

from glioseg.evaluate.tune_postprocess import TuneCase, TuneError, choose_min_sizes
from glioseg.infer.postprocess import (
    apply_size_thresholds,
    min_sizes_in_voxels,
    remove_small_region_components,
)

SHAPE = (48, 48, 48)


def _ball(centre, radius) -> np.ndarray:
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


def _case(i: int) -> TuneCase:
    """A tumour (edema ball around a core with an ET rim) plus specks: 2x2x2 WT specks (8
    voxels) far away, 3x3x3 TC specks (27 voxels) inside the edema, and a 2-voxel ET speck in
    the necrosis. The right thresholds at 1 mm: WT above 8, TC above 27, ET above 2 mm^3, all
    below the true lesions' sizes (hundreds of voxels)."""
    c = (24 + i % 2, 24, 24)
    ref = np.zeros(SHAPE, np.uint8)
    ref[_ball(c, 14)] = 2
    ref[_ball(c, 6)] = 3
    ref[_ball(c, 4)] = 1
    pred = ref.copy()
    for corner in ((2, 2, 2), (2, 40, 2), (40, 2, 40)):  # edema specks far from the tumour
        x, y, z = corner
        pred[x:x + 2, y:y + 2, z:z + 2] = 2
    x, y, z = c[0] + 12, c[1], c[2]  # necrosis inside the edema, beyond the core's
    # dilated zone (3 voxels): a false TC component
    pred[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2] = 1
    pred[c[0], c[1], c[2]:c[2] + 2] = 3  # ET speck in the necrosis, far from the rim
    probs = np.stack([np.isin(pred, (1, 2, 3)), np.isin(pred, (1, 3)), pred == 3]).astype(
        np.float32)
    return TuneCase(f"BraTS-GLI-{i:05d}-000", probs, ref, (1.0, 1.0, 1.0))


def test_region_components_are_demoted_keeping_the_nesting():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3] = 3  # 8 voxels of ET alone: a WT, TC and ET component
    labels[5:9, 5:9, 5:9] = 2
    labels[6:8, 6:8, 6:8] = 1  # 8 voxels of necrosis inside edema
    out = remove_small_region_components(labels, "ET", 9)
    assert (out[1:3, 1:3, 1:3] == 1).all()  # ET -> necrosis, still tumour core
    out = remove_small_region_components(labels, "TC", 9)
    assert (out[6:8, 6:8, 6:8] == 2).all() and (out[1:3, 1:3, 1:3] == 2).all()
    out = remove_small_region_components(labels, "WT", 9)
    assert (out[1:3, 1:3, 1:3] == 0).all() and (out[5:9, 5:9, 5:9] > 0).all()
    assert (apply_size_thresholds(labels, (0, 0, 0)) == labels).all()


def test_sizes_in_mm3_become_voxels_of_the_grid():
    sizes = {"WT": 250.0, "TC": 150.0, "ET": 100.0}
    assert min_sizes_in_voxels(sizes, (1, 1, 1)) == (250, 150, 100)
    assert min_sizes_in_voxels(sizes, (2, 2, 2)) == (32, 19, 13)  # 31.25 -> 32, ...
    assert min_sizes_in_voxels(None, (1, 1, 1)) == (0, 0, 0)


def test_choice_removes_exactly_the_specks():
    cases = [_case(0), _case(1)]
    result = choose_min_sizes(cases, candidates=(0, 4, 16, 64, 4000))
    # WT specks have 8 voxels (16 removes them, 4 does not; 4000 would remove the tumour)
    assert result.min_size_mm3 == {"WT": 16.0, "TC": 64.0, "ET": 4.0}
    for region in ("WT", "TC"):  # the specks were false-positive lesions
        assert result.before["lesion_fp"][region] > 0
        assert result.before["lesion_dice"][region] < 0.6
    # the ET speck lies within the rim's matching zone: it lowered the lesion's own Dice
    assert result.before["lesion_dice"]["ET"] < 1.0
    for region in ("WT", "TC", "ET"):
        assert result.after["lesion_fp"][region] == 0
        assert result.after["lesion_dice"][region] == pytest.approx(1.0)
    assert result.chosen_on == [c.case_id for c in cases]


def test_a_choice_at_the_top_of_the_range_is_warned():
    cases = [_case(0), _case(1)]
    result = choose_min_sizes(cases, candidates=(0, 4, 16, 64))
    assert result.min_size_mm3["TC"] == 64.0 and result.at_top() == ["TC"]
    warning = result.table().splitlines()[-1]
    assert warning.startswith("warning: TC: 64 mm^3 is the largest size tried (0, 4, 16, 64 "
                              "mm^3)")
    wide = choose_min_sizes(cases, candidates=(0, 4, 16, 64, 4000))
    assert wide.at_top() == [] and "warning" not in wide.table()


def test_nothing_is_removed_without_a_gain():
    case = _case(0)
    clean = np.stack([np.isin(case.reference, (1, 2, 3)), np.isin(case.reference, (1, 3)),
                      case.reference == 3]).astype(np.float32)
    result = choose_min_sizes([TuneCase(case.case_id, clean, case.reference, (1, 1, 1))])
    assert result.min_size_mm3 == {"WT": 0.0, "TC": 0.0, "ET": 0.0}


def test_no_cases_is_an_error():
    with pytest.raises(TuneError, match="no validation cases"):
        choose_min_sizes([])


def test_the_card_records_the_choice_and_predict_applies_it(tmp_path):
    """The card's sizes reach ``CasePredictor.labels``; ``--min-size`` overrides them."""
    from glioseg.infer.predict import CasePredictor, PredictOptions
    from glioseg.model.card import ModelCard
    from glioseg.model.registry import ModelConfig, build_model

    cfg = ModelConfig(base_width=4, n_stages=2, max_width=8, patch_size=(16, 16, 16))
    model = build_model(cfg).eval()
    card = ModelCard.for_model(cfg, postprocessing={"min_size_mm3": {"WT": 16, "TC": 64,
                                                                     "ET": 4}})
    card = ModelCard.from_json(card.to_json())  # as read back from card.json
    probs = _case(0).probabilities
    with_card = CasePredictor([(model, card)], PredictOptions())
    override = CasePredictor([(model, card)], PredictOptions(min_size_mm3=(0, 0, 0)))
    try:
        cleaned = with_card.labels(probs, None, (1.0, 1.0, 1.0))
        raw = override.labels(probs, None, (1.0, 1.0, 1.0))
    finally:
        with_card.close()
        override.close()
    assert (cleaned == _case(0).reference).all()
    assert (raw != _case(0).reference).any()


def test_cases_read_in_a_declared_label_scheme(tmp_path):
    """BraTS 2021 names with nnU-Net's 0/1/2/3 labels: refused in the layout's scheme, read as
    the internal labels once declared brats2023."""
    from datafiles import example_seg, write_brats_case

    from glioseg.data.layouts import CaseError
    from glioseg.evaluate.tune_postprocess import predicted_cases
    from glioseg.model.card import ModelCard, save_model
    from glioseg.model.registry import ModelConfig, build_model

    cfg = ModelConfig(base_width=4, n_stages=2, max_width=8, patch_size=(16, 16, 16))
    model_dir = save_model(tmp_path / "m", build_model(cfg), ModelCard.for_model(cfg))
    seg = example_seg("brats2021", (16, 16, 16))
    write_brats_case(tmp_path / "d", "brats2021", 1, shape=(16, 16, 16),
                     seg=np.where(seg == 4, 3, seg).astype(np.uint8))
    with pytest.raises(CaseError, match=r"labels \[3\].*--labels brats2023"):
        predicted_cases(model_dir, tmp_path / "d", progress=False)
    (case,) = predicted_cases(model_dir, tmp_path / "d", progress=False,
                              label_scheme="brats2023")
    assert (case.reference == np.where(seg == 4, 3, seg)).all()
    from typer.testing import CliRunner

    from glioseg.cli import app

    args = ["tune-postprocess", "-m", str(model_dir), "-i", str(tmp_path / "d"), "--dry-run"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--labels brats2023" in " ".join(refused.output.split())
    res = CliRunner().invoke(app, [*args, "--labels", "brats2023"])
    assert res.exit_code == 0 and "card unchanged (--dry-run)" in res.output, res.output

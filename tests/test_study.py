"""The label-efficiency study's runner (``glioseg.study``): finished runs and missing
pretraining refused, the outputs written from made-up results, lesion-wise scores by hand.

The training runs themselves are covered by ``test_fit.py`` / ``test_finetune.py``; the
plan, statistics and tables by ``test_workflows_study_*.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from study_results import made_up_result, made_up_results

from glioseg import study as S
from glioseg.workflows.overrides import section
from glioseg.workflows.study_tables import CSV_COLUMNS

# --------------------------------------------------------------------------- runs

def test_finished_run_with_other_settings_is_refused(tmp_path: Path) -> None:
    spec = S.RunSpec("target", "scratch-none-n2-s0", section("train", steps=10), arm="scratch")
    run = tmp_path / "runs" / "target" / spec.name
    run.mkdir(parents=True)
    done = {"overrides": ["train.steps=10"], "arm": "scratch", "dice_mean": 0.5}
    (run / "result.json").write_text(json.dumps(done))
    assert S.run_one(spec, tmp_path / "runs", S.StudyPlan())["dice_mean"] == 0.5  # no training
    other = S.RunSpec("target", spec.name, section("train", steps=20), arm="scratch")
    with pytest.raises(S.StudyError, match="other settings"):
        S.run_one(other, tmp_path / "runs", S.StudyPlan())


def test_missing_pretraining_is_refused(tmp_path: Path) -> None:
    spec = S.RunSpec("target", "source-full-n2-s0", section("train", steps=10), arm="source",
                     depends=("source",))
    with pytest.raises(S.StudyError, match="pretraining run source"):
        S.run_one(spec, tmp_path / "runs", S.StudyPlan())


def test_outputs(tmp_path: Path) -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.55), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    results = made_up_results(ft)
    results += [made_up_result("scratch", "none", 4, s, [(20, 0.5), (40, 0.6)]) for s in (0, 1, 2)]
    results += [made_up_result("source", "full", 4, s, [(20, 0.6), (40, 0.7)]) for s in (0, 1, 2)]
    results += [made_up_result("seq-scratch", "none", 2, s, [(20, 0.1), (40, 0.3)]) for s in (0, 1)]
    results += [made_up_result("seq-source", "full", 2, s, [(20, 0.3), (40, 0.5)]) for s in (0, 1)]
    plan = S.StudyPlan(seeds=(0, 1, 2), n_labelled=(2, 4))
    pre = {"source": {"steps": 300, "seconds": 100.0, "dice_mean": 0.3, "dice_WT": 0.4}}
    doc = S.write_outputs(tmp_path, plan, results, pre, 12.0)

    with (tmp_path / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert len(rows) == len(results)
    seq1 = next(r for r in rows if r["arm"] == "seq-source" and r["seed"] == "1")
    assert seq1["modalities"] == "t2+t1" and float(seq1["dice_mean"]) == pytest.approx(0.5)
    never = next(r for r in rows if r["arm"] == "scratch" and r["n_labelled"] == "2")
    assert never["steps_to_target"] == "40.0000"

    md = (tmp_path / "summary.md").read_text()
    # mean of .60/.62/.70, sd 0.0529, 95% CI half-width 4.3027 * 0.0529 / sqrt(3) = 0.131
    assert "| source/full | 2 | 3 | 0.640 ± 0.131 |" in md
    assert "PASS" in md
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["acceptance"]["passed"] is True and study["verdict"] == doc["verdict"]
    for name in S.FIGURES:
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    assert [p.name for p in tmp_path.glob(".*")] == [".report.json"], "no temporary file left"


def test_lesion_scores_by_hand(tmp_path: Path, monkeypatch) -> None:
    """A prediction equal to the reference plus one far speck of edema: lesion-wise WT Dice
    1 / (1 lesion + 1 false positive) = 0.5, TC and ET 1."""
    import numpy as np
    import torch

    from glioseg import io_atomic
    from glioseg.data.labels import MODALITIES, regions_from_labels
    from glioseg.model.card import ModelCard, save_model
    from glioseg.model.registry import ModelConfig, build_model
    from glioseg.preprocess import cache as PC
    from glioseg.train import loop

    size = 24
    grid = np.indices((size,) * 3).transpose(1, 2, 3, 0)
    r = np.linalg.norm(grid - 12, axis=-1)
    labels = np.zeros((size,) * 3, np.uint8)
    labels[r < 7] = 2
    labels[r < 4] = 1
    labels[(r >= 3) & (r < 4)] = 3
    cache = tmp_path / "cache"
    PC.write_case(cache, "BraTS-GLI-00000-000", np.ones((4, size, size, size), np.float32),
                  labels, {"case_id": "BraTS-GLI-00000-000", "layout": "brats2023",
                           "shape": [size] * 3, "spacing": [1.0, 1.0, 1.0]})
    io_atomic.write_json(cache / "dataset.json", {
        "format": PC.CACHE_FORMAT, "modalities": list(MODALITIES), "spacing": None,
        "cases": ["BraTS-GLI-00000-000"], "source": "test"})
    cfg = ModelConfig(base_width=4, n_stages=2, max_width=8)
    save_model(tmp_path / "model", build_model(cfg), ModelCard.for_model(cfg))
    predicted = regions_from_labels(labels).astype(np.float32)
    predicted[0, 0:2, 0:2, 0:2] = 1.0  # an edema speck far from the tumour
    monkeypatch.setattr(loop, "predict_logits",
                        lambda *a, **k: torch.from_numpy(predicted * 20 - 10)[None])
    got = S.lesion_scores(tmp_path / "model", cache)
    assert got["lesion_dice_WT"] == pytest.approx(0.5)
    assert got["lesion_dice_TC"] == pytest.approx(1.0)
    assert got["lesion_dice_ET"] == pytest.approx(1.0)
    assert got["lesion_dice_mean"] == pytest.approx(2.5 / 3)

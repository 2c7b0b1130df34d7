"""The label-efficiency study: case draws, time to target, aggregation, acceptance, outputs.

The training runs themselves are covered by ``test_train.py`` / ``test_finetune.py``; here the
study's own logic is checked against hand-computed values on made-up results.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from glioseg import study as S

POOL = tuple(f"BraTS-SSA-{i:05d}-000" for i in range(10))


# --------------------------------------------------------------------------- case draws

def test_labelled_cases_nested_sorted_and_deterministic() -> None:
    for seed in (0, 1, 2):
        draws = [S.labelled_cases(POOL, n, seed, 2026) for n in (1, 2, 4, 8, 10)]
        for small, big in zip(draws, draws[1:], strict=False):
            assert set(small) < set(big), "a larger labelled set must contain the smaller one"
        for n, d in zip((1, 2, 4, 8, 10), draws, strict=True):
            assert len(d) == n == len(set(d))
            assert d == sorted(d), "cases come in pool order"
            assert set(d) <= set(POOL)
        assert draws == [S.labelled_cases(POOL, n, seed, 2026) for n in (1, 2, 4, 8, 10)]
    # different seeds draw different sets (for 3 seeds and 4 of 10 cases a collision of all
    # three would be a broken seed, not chance)
    fours = {tuple(S.labelled_cases(POOL, 4, s, 2026)) for s in (0, 1, 2)}
    assert len(fours) > 1


def test_labelled_cases_more_than_the_pool_is_an_error() -> None:
    with pytest.raises(S.StudyError, match="pool has 10"):
        S.labelled_cases(POOL, 11, 0, 2026)


def test_plan_validation() -> None:
    with pytest.raises(S.StudyError, match="unknown strategy"):
        S.StudyPlan(strategies=("full", "frozen"))
    with pytest.raises(S.StudyError, match="n_pool=3"):
        S.StudyPlan(n_labelled=(1, 4), n_pool=3)
    with pytest.raises(S.StudyError, match=">= 1"):
        S.StudyPlan(n_labelled=(0, 2))
    with pytest.raises(ValueError):
        S.StudyPlan(seeds=())


# --------------------------------------------------------------------------- run specs

def _cohorts(tmp: Path) -> S.Cohorts:
    return S.Cohorts({c: tmp / "data" / "cache" / c for c in S.COHORTS}, POOL)


def _ov(spec: S.RunSpec, key: str) -> str | None:
    vals = [o.split("=", 1)[1] for o in spec.overrides if o.startswith(key + "=")]
    return vals[-1] if vals else None


def test_target_specs_equal_budgets_and_arms(tmp_path: Path) -> None:
    plan = S.StudyPlan(seeds=(0, 1), n_labelled=(1, 2), steps=40, seq_n_labelled=(2,),
                       strategies=S.STRATEGIES, self_supervised_at=None)
    specs = S.target_specs(tmp_path, plan, _cohorts(tmp_path))
    # n=2 (strategies_at): scratch, 4 strategies, self-supervised; n=1: scratch, source/full,
    # self-supervised; then seq-scratch and seq-source at n=2; each x 2 seeds
    assert len(specs) == (6 + 3 + 2) * 2
    assert sorted(s.strategy for s in specs if s.arm == "source" and s.n_labelled == 1) \
        == ["full", "full"]
    assert len({s.strategy for s in specs if s.arm == "source" and s.n_labelled == 2}) == 4
    assert len({s.name for s in specs}) == len(specs)
    assert {_ov(s, "train.steps") for s in specs} == {"40"}
    for s in specs:
        ids = S.labelled_cases(POOL, s.n_labelled, s.seed, plan.data_seed)
        assert _ov(s, "data.cases") == "[" + ",".join(ids) + "]"
        assert _ov(s, "train.seed") == str(s.seed)
        assert _ov(s, "data.val_cache") == str(tmp_path / "data" / "cache" / "target_test")
        init = _ov(s, "transfer.init_from")
        # fine-tuning from a supervised model at finetune_lr, the others at the preset's lr
        assert _ov(s, "optim.lr") == ("0.0001" if s.arm == "source" else None)
        if s.arm in ("scratch", "seq-scratch"):
            assert init is None and s.depends == ()
        else:
            assert init is not None and Path(init).name == "last"
            assert s.depends == (Path(init).parent.name,)
            assert _ov(s, "transfer.strategy") == s.strategy
        if s.arm.startswith("seq-"):
            assert _ov(s, "data.modalities") == "[t2,t1]"
    seq_src = [s for s in specs if s.arm == "seq-source"]
    assert {s.depends for s in seq_src} == {("source-flair-t1ce",)}


def test_every_strategy_at_every_n(tmp_path: Path) -> None:
    plan = S.StudyPlan(seeds=(0,), n_labelled=(1, 4), strategies=("gradual", "full"),
                       strategies_at=None, self_supervised=False, seq_n_labelled=(), lr=0.002)
    specs = S.target_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [(s.arm, s.strategy, s.n_labelled) for s in specs] == [
        ("scratch", "none", 1), ("source", "gradual", 1), ("source", "full", 1),
        ("scratch", "none", 4), ("source", "gradual", 4), ("source", "full", 4)]
    assert [_ov(s, "optim.lr") for s in specs[:2]] == ["0.002", "0.0001"]


def test_pretrain_specs(tmp_path: Path) -> None:
    plan = S.StudyPlan(self_supervised=False, seq_n_labelled=())
    specs = S.pretrain_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [s.name for s in specs] == ["source"]
    plan = S.StudyPlan(seq_n_labelled=(2,))
    specs = S.pretrain_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [s.name for s in specs] == ["source", "source-flair-t1ce", "genesis"]
    assert _ov(specs[1], "data.modalities") == "[flair,t1ce]"
    assert _ov(specs[2], "train.task") == "genesis"
    assert "target_unlabelled" in str(_ov(specs[2], "data.cache_dir"))


def test_finished_run_with_other_settings_is_refused(tmp_path: Path) -> None:
    spec = S.RunSpec("target", "scratch-none-n2-s0", ("train.steps=10",), arm="scratch")
    run = tmp_path / "runs" / "target" / spec.name
    run.mkdir(parents=True)
    done = {"overrides": ["train.steps=10"], "arm": "scratch", "dice_mean": 0.5}
    (run / "result.json").write_text(json.dumps(done))
    assert S.run_one(spec, tmp_path / "runs", S.StudyPlan())["dice_mean"] == 0.5  # no training
    other = S.RunSpec("target", spec.name, ("train.steps=20",), arm="scratch")
    with pytest.raises(S.StudyError, match="other settings"):
        S.run_one(other, tmp_path / "runs", S.StudyPlan())


def test_missing_pretraining_is_refused(tmp_path: Path) -> None:
    spec = S.RunSpec("target", "source-full-n2-s0", ("train.steps=10",), arm="source",
                     depends=("source",))
    with pytest.raises(S.StudyError, match="pretraining run source"):
        S.run_one(spec, tmp_path / "runs", S.StudyPlan())


# --------------------------------------------------------------------------- analysis

CURVE = [{"step": 10.0, "elapsed_s": 2.0, "dice_mean": 0.30},
         {"step": 20.0, "elapsed_s": 4.5, "dice_mean": 0.55},
         {"step": 30.0, "elapsed_s": 7.0, "dice_mean": 0.50},
         {"step": 40.0, "elapsed_s": 9.0, "dice_mean": 0.62}]


def test_time_to_target() -> None:
    assert S.time_to_target(CURVE, 0.30) == (10.0, 2.0)   # reached at the first record (>=)
    assert S.time_to_target(CURVE, 0.50) == (20.0, 4.5)   # first crossing, not a later one
    assert S.time_to_target(CURVE, 0.60) == (40.0, 9.0)
    steps, secs = S.time_to_target(CURVE, 0.63)
    assert math.isnan(steps) and math.isnan(secs)
    assert all(math.isnan(v) for v in S.time_to_target(CURVE, math.nan))
    assert all(math.isnan(v) for v in S.time_to_target([], 0.1))


def test_val_curve_keeps_validation_records() -> None:
    records = [{"step": 10, "split": "train", "loss": 1.0, "elapsed_s": 1.0},
               {"step": 10, "split": "val", "dice_WT": 0.5, "dice_TC": 0.4, "dice_ET": 0.3,
                "dice_mean": 0.4, "n_cases": 2, "elapsed_s": 1.5}]
    assert S.val_curve(records) == [{"step": 10.0, "elapsed_s": 1.5, "dice_WT": 0.5,
                                     "dice_TC": 0.4, "dice_ET": 0.3, "dice_mean": 0.4}]


def _result(arm: str, strategy: str, n: int, seed: int, curve: list[tuple[int, float]],
            steps: int = 40) -> dict[str, Any]:
    """A made-up run result; WT/TC/ET are the mean Dice +0.1/0/-0.1; 0.25 s per step."""
    cv = [{"step": float(s), "elapsed_s": 0.25 * s, "dice_mean": d, "dice_WT": d + 0.1,
           "dice_TC": d, "dice_ET": d - 0.1} for s, d in curve]
    last = cv[-1]
    mods = ("t2", "t1") if arm.startswith("seq") else ("t1", "t1ce", "t2", "flair")
    return {"arm": arm, "strategy": strategy, "n_labelled": n, "seed": seed, "steps": steps,
            "seconds": 0.25 * steps, "name": f"{arm}-{strategy}-n{n}-s{seed}",
            "modalities": mods, "cases": [f"c{i}" for i in range(n)], "curve": cv,
            **{k: last[k] for k in S.REGION_KEYS}}


def _results(ft_curves: dict[int, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Scratch ends at 0.40 / 0.50 / 0.45 (seeds 0-2); ``source/full`` follows ``ft_curves``."""
    scratch = {0: [(20, 0.2), (40, 0.40)], 1: [(20, 0.3), (40, 0.50)],
               2: [(20, 0.2), (40, 0.45)]}
    out = []
    for seed in (0, 1, 2):
        out.append(_result("scratch", "none", 2, seed, scratch[seed]))
        out.append(_result("source", "full", 2, seed, ft_curves[seed]))
    return out


def test_result_rows_and_summary_against_hand_computation() -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.40), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    rows = S.result_rows(_results(ft))
    by = {(r["arm"], r["seed"]): r for r in rows}
    # time to target: the first validation at or above the same seed's scratch final Dice
    assert by[("source", 0)]["target_dice"] == pytest.approx(0.40)
    assert (by[("source", 0)]["steps_to_target"], by[("source", 0)]["seconds_to_target"]) \
        == (20.0, 5.0)
    assert by[("source", 1)]["steps_to_target"] == 40.0       # 0.40 < 0.50 at step 20
    assert by[("source", 2)]["steps_to_target"] == 20.0
    assert by[("scratch", 1)]["steps_to_target"] == 40.0      # scratch reaches itself at the end
    assert by[("source", 0)]["modalities"] == "t1+t1ce+t2+flair"
    assert by[("source", 0)]["run"] == "runs/target/source-full-n2-s0"

    summ = {s["arm"]: s for s in S.summarise(rows)}
    src, sc = summ["source/full"], summ["scratch"]
    assert src["seeds"] == 3 and src["reached"] == 3 and src["steps"] == 40
    assert src["dice_mean"] == pytest.approx((0.60 + 0.62 + 0.70) / 3)
    assert src["dice_mean_sd"] == pytest.approx(statistics.stdev([0.60, 0.62, 0.70]))
    assert src["dice_WT"] == pytest.approx((0.70 + 0.72 + 0.80) / 3)
    assert src["steps_to_target"] == pytest.approx((20 + 40 + 20) / 3)
    assert src["steps_to_target_sd"] == pytest.approx(statistics.stdev([20, 40, 20]))
    assert sc["dice_mean"] == pytest.approx(0.45)
    assert sc["dice_mean_sd"] == pytest.approx(statistics.stdev([0.40, 0.50, 0.45]))


def test_summary_time_to_target_over_seeds_that_reached_it() -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.40), (40, 0.48)], 2: [(20, 0.10), (40, 0.30)]}
    summ = {s["arm"]: s for s in S.summarise(S.result_rows(_results(ft)))}
    src = summ["source/full"]
    assert src["reached"] == 1
    assert src["steps_to_target"] == 20.0 and src["steps_to_target_sd"] == 0.0


def test_acceptance_passes_on_a_clear_gain_reached_early() -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.55), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    acc = S.acceptance(S.result_rows(_results(ft)), 2)
    assert acc["passed"] is True
    assert acc["best_arm"] == "source/full"
    assert acc["gain"] == pytest.approx((0.60 + 0.62 + 0.70) / 3 - 0.45)
    assert acc["step_fraction"] == pytest.approx(0.5)
    assert "PASS" in acc["verdict"]


@pytest.mark.parametrize("ft, why", [
    # a gain below the margin: mean 0.48 vs 0.45
    ({0: [(20, 0.3), (40, 0.43)], 1: [(20, 0.3), (40, 0.52)], 2: [(20, 0.3), (40, 0.49)]},
     "gain"),
    # a clear mean gain, but seed 1 never reaches its scratch Dice (0.50)
    ({0: [(20, 0.45), (40, 0.70)], 1: [(20, 0.40), (40, 0.49)], 2: [(20, 0.50), (40, 0.90)]},
     "reach"),
    # a clear gain, but only at the end of the budget: no saving in steps
    ({0: [(20, 0.3), (40, 0.60)], 1: [(20, 0.3), (40, 0.62)], 2: [(20, 0.3), (40, 0.70)]},
     "fraction"),
])
def test_acceptance_fails(ft: dict[int, list[tuple[int, float]]], why: str) -> None:
    acc = S.acceptance(S.result_rows(_results(ft)), 2)
    assert acc["passed"] is False, why
    assert "FAIL" in acc["verdict"]


def test_acceptance_without_arms_has_no_verdict() -> None:
    rows = [r for r in S.result_rows(_results({s: [(40, 0.5)] for s in (0, 1, 2)}))
            if r["arm"] == "scratch"]
    assert S.acceptance(rows, 2)["passed"] is None
    assert S.acceptance(rows, 4)["passed"] is None


# --------------------------------------------------------------------------- outputs

def test_outputs(tmp_path: Path) -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.55), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    results = _results(ft)
    results += [_result("scratch", "none", 4, s, [(20, 0.5), (40, 0.6)]) for s in (0, 1, 2)]
    results += [_result("source", "full", 4, s, [(20, 0.6), (40, 0.7)]) for s in (0, 1, 2)]
    results += [_result("seq-scratch", "none", 2, s, [(20, 0.1), (40, 0.3)]) for s in (0, 1)]
    results += [_result("seq-source", "full", 2, s, [(20, 0.3), (40, 0.5)]) for s in (0, 1)]
    plan = S.StudyPlan(seeds=(0, 1, 2), n_labelled=(2, 4))
    pre = {"source": {"steps": 300, "seconds": 100.0, "dice_mean": 0.3, "dice_WT": 0.4}}
    doc = S.write_outputs(tmp_path, plan, results, pre, 12.0)

    with (tmp_path / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == S.CSV_COLUMNS
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


def test_budget_grows_with_the_labelled_cases(tmp_path: Path) -> None:
    plan = S.StudyPlan(seeds=(0,), n_labelled=(1, 2, 4, 8), n_pool=10)
    assert [S.budget(plan, n) for n in (1, 2, 4, 8)] == [100, 100, 200, 250]
    specs = S.target_specs(tmp_path, plan, _cohorts(tmp_path))
    for s in specs:  # every arm at one n gets the same budget, validated 4 times
        steps = S.budget(plan, s.n_labelled)
        assert _ov(s, "train.steps") == str(steps)
        assert _ov(s, "train.val_every") == str(steps // 4)
    # the self-supervised arm runs where its question is asked (n <= 2)
    assert sorted({s.n_labelled for s in specs if s.arm == "self-supervised"}) == [1, 2]
    assert S.budget(S.StudyPlan(steps=40), 8) == 40  # a fixed budget when asked


def test_ci95_is_student_t():
    # t(0.975, 2) = 4.3027; sd 0.1 over 3 seeds -> 4.3027 * 0.1 / sqrt(3)
    assert S.ci95(0.1, 3) == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(S.ci95(0.1, 1))


def _summary_row(arm: str, n: int, mean: float, ci: float) -> dict[str, Any]:
    return {"arm": arm, "n_labelled": n, "dice_mean": mean, "dice_mean_ci": ci}


def test_label_efficiency_checks_by_hand():
    rows = [_summary_row("scratch", 1, 0.40, 0.05), _summary_row("scratch", 8, 0.70, 0.05),
            _summary_row("source/full", 1, 0.65, 0.03), _summary_row("source/full", 8, 0.74, 0.02),
            _summary_row("self-supervised/full", 1, 0.38, 0.05)]
    c = S.label_efficiency_checks(rows)
    assert c["scratch_rises"] is True and c["transfer_not_below"] is True
    assert c["meet"] == 8  # 0.74 <= 0.70 + 0.05; at n=1 0.65 > 0.40 + 0.05
    assert c["ssl"] == {"1": pytest.approx(-0.02)} and c["ssl_helps"] is False
    # overlapping intervals: scratch does not rise clearly
    rows[1] = _summary_row("scratch", 8, 0.48, 0.05)
    assert S.label_efficiency_checks(rows)["scratch_rises"] is False
    # fine-tuned below scratch at one n
    rows[3] = _summary_row("source/full", 8, 0.47, 0.02)
    assert S.label_efficiency_checks(rows)["transfer_not_below"] is False


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

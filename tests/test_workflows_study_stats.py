"""The study's statistics (``glioseg.workflows.study_stats``) against hand-computed values on
made-up results: time to target, per-run rows, means over seeds, intervals, acceptance, checks,
and the mean learning curves of the curves figure."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from study_results import made_up_result, made_up_results

from glioseg.workflows import study_stats as SS

CURVE = [{"step": 10.0, "elapsed_s": 2.0, "dice_mean": 0.30},
         {"step": 20.0, "elapsed_s": 4.5, "dice_mean": 0.55},
         {"step": 30.0, "elapsed_s": 7.0, "dice_mean": 0.50},
         {"step": 40.0, "elapsed_s": 9.0, "dice_mean": 0.62}]


def test_time_to_target() -> None:
    assert SS.time_to_target(CURVE, 0.30) == (10.0, 2.0)   # reached at the first record (>=)
    assert SS.time_to_target(CURVE, 0.50) == (20.0, 4.5)   # first crossing, not a later one
    assert SS.time_to_target(CURVE, 0.60) == (40.0, 9.0)
    steps, secs = SS.time_to_target(CURVE, 0.63)
    assert math.isnan(steps) and math.isnan(secs)
    assert all(math.isnan(v) for v in SS.time_to_target(CURVE, math.nan))
    assert all(math.isnan(v) for v in SS.time_to_target([], 0.1))


def test_result_rows_and_summary_against_hand_computation() -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.40), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    rows = SS.result_rows(made_up_results(ft))
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

    summ = {s["arm"]: s for s in SS.summarise(rows)}
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
    summ = {s["arm"]: s for s in SS.summarise(SS.result_rows(made_up_results(ft)))}
    src = summ["source/full"]
    assert src["reached"] == 1
    assert src["steps_to_target"] == 20.0 and src["steps_to_target_sd"] == 0.0


def test_acceptance_passes_on_a_clear_gain_reached_early() -> None:
    ft = {0: [(20, 0.45), (40, 0.60)], 1: [(20, 0.55), (40, 0.62)], 2: [(20, 0.50), (40, 0.70)]}
    acc = SS.acceptance(SS.result_rows(made_up_results(ft)), 2)
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
    acc = SS.acceptance(SS.result_rows(made_up_results(ft)), 2)
    assert acc["passed"] is False, why
    assert "FAIL" in acc["verdict"]


def test_acceptance_without_arms_has_no_verdict() -> None:
    rows = [r for r in SS.result_rows(made_up_results({s: [(40, 0.5)] for s in (0, 1, 2)}))
            if r["arm"] == "scratch"]
    assert SS.acceptance(rows, 2)["passed"] is None
    assert SS.acceptance(rows, 4)["passed"] is None


def test_ci95_is_student_t():
    # t(0.975, 2) = 4.3027; sd 0.1 over 3 seeds -> 4.3027 * 0.1 / sqrt(3)
    assert SS.ci95(0.1, 3) == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(SS.ci95(0.1, 1))


def _summary_row(arm: str, n: int, mean: float, ci: float) -> dict[str, Any]:
    return {"arm": arm, "n_labelled": n, "dice_mean": mean, "dice_mean_ci": ci}


def test_label_efficiency_checks_by_hand():
    rows = [_summary_row("scratch", 1, 0.40, 0.05), _summary_row("scratch", 8, 0.70, 0.05),
            _summary_row("source/full", 1, 0.65, 0.03), _summary_row("source/full", 8, 0.74, 0.02),
            _summary_row("self-supervised/full", 1, 0.38, 0.05)]
    c = SS.label_efficiency_checks(rows)
    assert c["scratch_rises"] is True and c["transfer_not_below"] is True
    assert c["meet"] == 8  # 0.74 <= 0.70 + 0.05; at n=1 0.65 > 0.40 + 0.05
    assert c["ssl"] == {"1": pytest.approx(-0.02)} and c["ssl_helps"] is False
    # overlapping intervals: scratch does not rise clearly
    rows[1] = _summary_row("scratch", 8, 0.48, 0.05)
    assert SS.label_efficiency_checks(rows)["scratch_rises"] is False
    # fine-tuned below scratch at one n
    rows[3] = _summary_row("source/full", 8, 0.47, 0.02)
    assert SS.label_efficiency_checks(rows)["transfer_not_below"] is False


def test_mean_curves_average_seeds_step_by_step() -> None:
    runs = [made_up_result("scratch", "none", 2, 0, [(20, 0.2), (40, 0.4)]),
            made_up_result("scratch", "none", 2, 1, [(20, 0.4), (40, 0.6)]),
            made_up_result("source", "full", 2, 0, [(20, 0.5), (40, 0.7)]),
            made_up_result("source", "full", 4, 0, [(20, 0.9)]),
            made_up_result("seq-scratch", "none", 2, 0, [(20, 0.1)])]
    curves = SS.mean_curves(runs, 2)
    assert list(curves) == ["scratch", "source/full"]  # scratch first, no seq-* arm
    assert curves["scratch"] == [(20.0, pytest.approx(0.3)), (40.0, pytest.approx(0.5))]
    assert curves["source/full"] == [(20.0, 0.5), (40.0, 0.7)]
    assert SS.scratch_final(runs, 2) == pytest.approx(0.5)
    assert SS.scratch_final(runs, 8) is None

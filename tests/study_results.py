"""Made-up results of the label-efficiency study's target runs, for the tests of its statistics
(``test_workflows_study_stats.py``) and its outputs (``test_study.py``)."""

from __future__ import annotations

from typing import Any

from glioseg.workflows.study_stats import REGION_KEYS


def made_up_result(arm: str, strategy: str, n: int, seed: int, curve: list[tuple[int, float]],
            steps: int = 40) -> dict[str, Any]:
    """A made-up run result; WT/TC/ET are the mean Dice +0.1/0/-0.1; 0.25 s per step."""
    cv = [{"step": float(s), "elapsed_s": 0.25 * s, "dice_mean": d, "dice_WT": d + 0.1,
           "dice_TC": d, "dice_ET": d - 0.1} for s, d in curve]
    last = cv[-1]
    mods = ("t2", "t1") if arm.startswith("seq") else ("t1", "t1ce", "t2", "flair")
    return {"arm": arm, "strategy": strategy, "n_labelled": n, "seed": seed, "steps": steps,
            "seconds": 0.25 * steps, "name": f"{arm}-{strategy}-n{n}-s{seed}",
            "modalities": mods, "cases": [f"c{i}" for i in range(n)], "curve": cv,
            **{k: last[k] for k in REGION_KEYS}}


def made_up_results(ft_curves: dict[int, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Scratch ends at 0.40 / 0.50 / 0.45 (seeds 0-2); ``source/full`` follows ``ft_curves``."""
    scratch = {0: [(20, 0.2), (40, 0.40)], 1: [(20, 0.3), (40, 0.50)],
               2: [(20, 0.2), (40, 0.45)]}
    out = []
    for seed in (0, 1, 2):
        out.append(made_up_result("scratch", "none", 2, seed, scratch[seed]))
        out.append(made_up_result("source", "full", 2, seed, ft_curves[seed]))
    return out

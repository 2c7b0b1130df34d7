"""The label-efficiency study's tables: ``results.csv`` (one row per target run) and
``summary.md`` (means over seeds per arm and n, the acceptance, the checks, the pretraining),
and ``finite`` for the strict JSON of ``study.json``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glioseg.io_atomic import write_text
from glioseg.workflows.study_plan import StudyPlan, run_lr
from glioseg.workflows.study_stats import LESION_KEYS, REGION_KEYS

CSV_COLUMNS: tuple[str, ...] = (
    "arm", "strategy", "modalities", "n_labelled", "seed", "steps", "seconds", *REGION_KEYS,
    *LESION_KEYS,
    "target_dice", "steps_to_target", "seconds_to_target", "cases", "run",
)
"""Columns of ``results.csv``, one row per arm x n_labelled x seed."""

def write_results_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``results.csv`` (``CSV_COLUMNS``), written to a temporary name then renamed."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                        ("" if isinstance(v, float) else v)) for k, v in r.items()
                    if k in CSV_COLUMNS})
    write_text(path, buf.getvalue())


def _pm(m: float, sd: float, digits: int = 3) -> str:
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if math.isnan(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def checks_markdown(checks: Mapping[str, Any]) -> list[str]:
    """The lines of ``summary.md`` stating ``label_efficiency_checks``."""
    def yes(v: Any) -> str:
        return "n/a" if v is None else ("yes" if v else "NO")

    lines = [f"- scratch rises with the labelled cases (largest vs smallest n, 95% intervals "
             f"apart): {yes(checks.get('scratch_rises'))}"
             + (" ({:.3f} -> {:.3f})".format(*checks["scratch_range"])
                if checks.get("scratch_range") else ""),
             f"- fine-tuned from the source model at or above scratch at every n: "
             f"{yes(checks.get('transfer_not_below'))}",
             "- scratch catches up (the fine-tuned mean within scratch's 95% interval from "
             "this n on): n = "
             + (str(checks["meet"]) if checks.get("meet") is not None else "- (never)")]
    ssl = checks.get("ssl") or {}
    if ssl:
        gains = ", ".join(f"n={n}: {g:+.3f}" for n, g in ssl.items())
        lines.append(f"- self-supervised pretraining then fine-tuning vs scratch (mean Dice): "
                     f"{gains}; helps at n <= 2: {yes(checks.get('ssl_helps'))}")
    return lines


def summary_markdown(summary: Sequence[Mapping[str, Any]], accept: Mapping[str, Any],
                     pretrain: Mapping[str, Any], plan: StudyPlan | None = None,
                     checks: Mapping[str, Any] | None = None) -> str:
    """``summary.md``: mean ± sd across seeds per arm and n, then the acceptance verdict."""
    setup = ""
    if plan is not None:
        lr = "the preset's" if plan.lr <= 0 else f"{plan.lr:g}"
        ft = f"{run_lr(plan, 'source') or 'the preset'}"
        steps = (f"{plan.steps} steps" if plan.steps else
                 f"{plan.steps_per_case} steps per labelled case within [{plan.min_steps}, "
                 f"{plan.max_steps}]")
        every = f"every {plan.val_every} steps" if plan.val_every else "4 times per run"
        setup = (f" Every target run: {steps} of {plan.patch}^3 patches, "
                 f"{plan.warmup_steps} warm-up steps, validation on {plan.n_test} held-out "
                 f"target cases {every}; peak learning rate {ft} for the "
                 f"source arms (fine-tuning the 4-sequence source model), {lr} for the others "
                 "(seq-source included: its input layer is new).")
    lines = ["# Label efficiency on the target site", "",
             "Target test Dice (mean ± 95% confidence interval across seeds, Student t; "
             "WT/TC/ET: mean ± sd) after an equal step budget per n; "
             "time to target = first validation at or above the scratch arm's final mean Dice "
             "(same labelled cases and seed), averaged over the seeds that reached it."
             + setup, "",
             "| arm | n labelled | seeds | Dice mean | WT | TC | ET | lesion-wise mean | "
             "steps to target | seconds to target | reached |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["arm"].startswith("seq"), s["n_labelled"],
                                            s["arm"])):
        lines.append(
            f"| {s['arm']} | {s['n_labelled']} | {s['seeds']} | "
            f"{_pm(s['dice_mean'], s.get('dice_mean_ci', s['dice_mean_sd']))} | "
            f"{_pm(s['dice_WT'], s['dice_WT_sd'])} | "
            f"{_pm(s['dice_TC'], s['dice_TC_sd'])} | {_pm(s['dice_ET'], s['dice_ET_sd'])} | "
            f"{_pm(s.get('lesion_dice_mean', math.nan), s.get('lesion_dice_mean_sd', math.nan))}"
            " | "
            f"{_pm(s['steps_to_target'], s['steps_to_target_sd'], 0)} / {s['steps']} | "
            f"{_pm(s['seconds_to_target'], s['seconds_to_target_sd'], 1)} | "
            f"{s['reached']}/{s['seeds']} |")
    lines += ["", "## Acceptance", "", str(accept.get("verdict", "")), ""]
    if checks is not None:
        lines += ["## What the curves show", "", *checks_markdown(checks), ""]
    lines += ["## Pretraining", ""]
    for name, p in pretrain.items():
        dice = p.get("dice_mean")
        extra = "" if dice is None or math.isnan(dice) else \
            f", zero-shot target test Dice {dice:.3f}"
        lines.append(f"- {name}: {p['steps']} steps, {p['seconds']:.0f} s{extra}")
    return "\n".join(lines) + "\n"


def finite(obj: Any) -> Any:
    """NaN -> None, so study.json is strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj

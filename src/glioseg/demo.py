"""``glioseg demo``: the whole story on synthetic data, in minutes on a CPU.

Six stages, each the function behind a CLI command (nothing re-implemented here):

1. ``data``: a source-site and a target-site cohort (``glioseg synth``, profiles ``source`` and
   ``target``), preprocessed to caches (``glioseg preprocess``);
2. ``shift``: the domain shift between the source cohort and the target test cases
   (``glioseg shift``);
3. ``source``: a model trained on the source site (``glioseg train``);
4. ``target``: the same budget of steps on a few labelled target cases twice: fine-tuned from
   the source model's ``best/`` (``glioseg finetune``), and from scratch;
5. ``evaluate``: each model's post-processing (per-region size thresholds) chosen on the
   labelled target cases (``glioseg tune-postprocess``), then the held-out target test cases
   predicted (``glioseg predict``) by the source model as it is, the scratch model and the
   fine-tuned model (each run's ``last/``: the test cases choose nothing), scored with the
   BraTS metrics, legacy and lesion-wise (``glioseg evaluate``);
6. ``report``: ``summary.md`` (the Dice table), two comparison figures, ``timings.json``,
   ``hardware.json``, then ``report.html`` / ``report.md`` (``glioseg report``).

The target runs validate on the target test cases every few steps: that is the learning curve
of the report, for monitoring only; the table scores ``last/``, the model after the full budget.

Layout of the demo folder::

    DIR/report.html, report.md, summary.md, timings.json, hardware.json
    DIR/dice.png, curves.png, overlay_scratch.png, overlay_transfer.png
    DIR/data/raw/<cohort>/, DIR/data/cache/<cohort>/   source, target_train, target_test
    DIR/shift/                                         shift.json + figures
    DIR/runs/source/, runs/scratch/, runs/transfer/    training runs (fit's run folders)
    DIR/predictions/<model>/, DIR/eval/<model>/        source-only, scratch, transfer
    DIR/.stages/<stage>.json                           finished stages (seconds, plan)

Re-running resumes: a stage whose marker ``.stages/<stage>.json`` exists is skipped, and an
interrupted training run continues from its ``last.pt`` (``glioseg.train.fit``). A folder made
with another plan (``--quick`` vs default) is refused rather than mixed.

The plan, its cohorts and the runs' typed config overrides are ``glioseg.workflows.demo_plan``;
the markers, cohort writing and curves are the runner shared with the study
(``glioseg.workflows.runner``); the figures are ``glioseg.report.demo_figures``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from glioseg import io_atomic
from glioseg.data.labels import REGIONS
from glioseg.runinfo import hardware
from glioseg.workflows.demo_plan import (
    DemoError,
    DemoPlan,
    demo_cohorts,
    describe_plan,
    source_overrides,
    target_overrides,
)
from glioseg.workflows.overrides import Overrides, build_config
from glioseg.workflows.runner import (
    check_plan,
    prepare_cohort,
    read_marker,
    read_val_records,
    run_if_not_done,
    stage_marker,
    timed,
)

STAGES: tuple[str, ...] = ("data", "shift", "source", "target", "evaluate", "report")
"""The stages, in order."""

COHORTS: tuple[str, ...] = ("source", "target_train", "target_test")
"""Synthetic cohorts: the source site, the labelled target cases, the held-out target cases."""

ARMS: tuple[str, ...] = ("source-only", "scratch", "transfer")
"""Models scored on the target test cases (rows of the Dice table)."""

ARM_LABELS: dict[str, str] = {
    "source-only": "source model, no target labels",
    "scratch": "scratch (target cases only)",
    "transfer": "transfer (fine-tuned from source)",
}

REPORT_SPEC: dict[str, Any] = {
    "skip": ["data", "predictions", "runs/*/tb", "runs/*/last", "runs/scratch/best",
             "runs/transfer/best", "eval/*/summary.json"],
    "order": ["shift", "runs", "runs/source", "runs/scratch", "runs/transfer", "eval",
              "eval/source-only", "eval/scratch", "eval/transfer"],
    "titles": {
        "shift": "Stage 2: domain shift, source site vs target site",
        "runs": "Stages 3-4: training runs",
        "runs/source": "Source model (trained on the source site)",
        "runs/source/best": "Source model card (best/, the start of fine-tuning)",
        "runs/scratch": "Scratch: the target cases only",
        "runs/transfer": "Transfer: fine-tuned from the source model",
        "eval": "Stage 5: BraTS metrics on the held-out target cases",
        "eval/source-only": "Source model, no target labels",
        "eval/scratch": "Scratch",
        "eval/transfer": "Transfer",
    },
}
"""``.report.json`` of the demo folder (``glioseg.report.html``): what the report leaves out
(the raw data, the predictions, duplicated model cards) and the order of its sections."""


# --------------------------------------------------------------------------- results

def dice_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the Dice table from ``glioseg evaluate``'s ``summary.json`` per model.

    Each row: ``model``, ``label``, ``n_cases``, and per region ``WT``/``TC``/``ET`` the mean
    and sample sd (``WT_sd`` ...; None for one case) of the legacy Dice over cases, plus
    ``mean``: the mean of the three regions' mean Dice; ``lesion_WT`` ... and
    ``lesion_mean``: the same of the lesion-wise Dice (None when not scored).
    """
    rows = []
    for arm, summary in summaries.items():
        dice = summary["metrics"]["dice"]
        row: dict[str, Any] = {"model": arm, "label": ARM_LABELS.get(arm, arm),
                               "n_cases": summary["n_cases"]}
        for region in REGIONS:
            row[region] = float(dice[region]["mean"])
            row[f"{region}_sd"] = dice[region]["std"]
        row["mean"] = sum(row[r] for r in REGIONS) / len(REGIONS)
        lesion = summary["metrics"].get("lesion_dice")
        for region in REGIONS:
            row[f"lesion_{region}"] = float(lesion[region]["mean"]) if lesion else None
        row["lesion_mean"] = (sum(row[f"lesion_{r}"] for r in REGIONS) / len(REGIONS)
                              if lesion else None)
        rows.append(row)
    return rows


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Dice table as Markdown: mean ± sd over the test cases per region, then the mean."""
    def cell(row: Mapping[str, Any], region: str) -> str:
        sd = row[f"{region}_sd"]
        return f"{row[region]:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    lesion = all(r.get("lesion_mean") is not None for r in rows)
    head = "| model | WT | TC | ET | mean |" + (" lesion-wise WT / TC / ET | lesion-wise mean |"
                                                if lesion else "")
    lines = [head, "|---|---|---|---|---|" + ("---|---|" if lesion else "")]
    for r in rows:
        line = (f"| {r['label']} | {cell(r, 'WT')} | {cell(r, 'TC')} | {cell(r, 'ET')} | "
                f"{r['mean']:.3f} |")
        if lesion:
            line += (f" {r['lesion_WT']:.3f} / {r['lesion_TC']:.3f} / {r['lesion_ET']:.3f} | "
                     f"{r['lesion_mean']:.3f} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def verdict(rows: Sequence[Mapping[str, Any]], n_train: int, steps: int) -> str:
    """One sentence comparing the transfer and scratch rows on the mean Dice."""
    by = {r["model"]: r for r in rows}
    if "transfer" not in by or "scratch" not in by:
        return "no scratch/transfer pair to compare"
    t, s = by["transfer"], by["scratch"]
    gain = t["mean"] - s["mean"]
    won = [reg for reg in REGIONS if t[reg] > s[reg]]
    word = "beats" if gain > 0 else "does not beat"
    return (f"With {n_train} labelled target cases and {steps} steps each, transfer {word} "
            f"scratch on the {t['n_cases']} held-out target cases: mean Dice {t['mean']:.3f} vs "
            f"{s['mean']:.3f} ({gain:+.3f}); better in {len(won)} of 3 regions"
            + (f" ({', '.join(won)})" if won else "") + ".")


# --------------------------------------------------------------------------- stage markers

def stage_done(out: Path, stage: str) -> dict[str, Any] | None:
    """The marker of a finished stage (``{"seconds": ...}``), None when it has not finished."""
    return read_marker(stage_marker(out, stage))


# --------------------------------------------------------------------------- stages

def _caches(out: Path) -> dict[str, Path]:
    return {c: (out / "data" / "cache" / c).resolve() for c in COHORTS}


def _raw(out: Path, cohort: str) -> Path:
    return out / "data" / "raw" / cohort


def run_data(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """Write the three synthetic cohorts and preprocess them (both resume case by case)."""
    for cohort, spec in demo_cohorts(plan).items():
        log(f"  {cohort}: {spec.n} '{spec.site}' cases")
        prepare_cohort(_raw(out, cohort), out / "data" / "cache" / cohort, [spec],
                       layout=plan.layout, spacing=plan.spacing, workers=plan.synth_workers)


def run_shift_stage(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """``glioseg shift`` of the target test cases against the source cohort."""
    from glioseg.analysis.shift_run import analyse_shift, write_shift
    from glioseg.report.shift_figures import draw_shift_figures

    analysis = analyse_shift(_raw(out, "source"), _raw(out, "target_test"),
                             n_permutations=plan.permutations, seed=0)
    doc = write_shift(out / "shift", analysis, draw_shift_figures(analysis, out / "shift"))
    log(f"  {doc['verdict']}")


def _fit(overrides: Overrides, config: str, run_dir: Path) -> dict[str, Any]:
    from glioseg.train.fit import fit

    return fit(build_config(config, overrides), run_dir)


def _log_val(log: Callable[[str], None], name: str, run_dir: Path) -> None:
    recs = read_val_records(run_dir / "metrics.jsonl")
    if recs:
        r = recs[-1]
        log(f"  {name}: step {r['step']:.0f}, validation Dice WT {r['dice_WT']:.3f} "
            f"TC {r['dice_TC']:.3f} ET {r['dice_ET']:.3f}")


def run_source(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """``glioseg train`` of the source model (resumes from ``last.pt``)."""
    run_dir = out / "runs" / "source"
    _fit(source_overrides(plan, _caches(out)), plan.config, run_dir)
    _log_val(log, "source model (source validation cases)", run_dir)


def run_target(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """Fine-tune the source model's ``best/`` on the labelled target cases, then train the
    same budget from scratch (``glioseg finetune`` / ``glioseg train``)."""
    caches = _caches(out)
    init = (out / "runs" / "source" / "best").resolve()
    for arm, init_from in (("transfer", init), ("scratch", None)):
        run_dir = out / "runs" / arm
        log(f"  {arm}: {plan.target_steps} steps on {plan.n_target_train} target cases"
            + (f", from {init}" if init_from else ", random initialisation"))
        _fit(target_overrides(plan, caches, init_from), plan.config, run_dir)
        _log_val(log, f"{arm} (target test cases)", run_dir)


def model_paths(out: Path) -> dict[str, Path]:
    """The model each row of the table scores: the source run's ``best/`` (chosen on source
    validation cases), and each target arm's ``last/`` (after the full budget)."""
    runs = out / "runs"
    return {"source-only": runs / "source" / "best", "scratch": runs / "scratch" / "last",
            "transfer": runs / "transfer" / "last"}


def run_evaluate(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """``glioseg tune-postprocess`` on the labelled target cases (never scored), then
    ``glioseg predict`` + ``glioseg evaluate --figures`` of every model on the test cases."""
    from glioseg.evaluate.folder import evaluate_folder
    from glioseg.evaluate.tune_postprocess import tune_postprocess
    from glioseg.infer.predict import PredictOptions, predict_dir
    from glioseg.report.eval_figures import draw_evaluation_figures

    test = _raw(out, "target_test")
    for arm, model in model_paths(out).items():
        tuned = tune_postprocess(model, _raw(out, "target_train"), progress=False)
        log(f"  {arm}: post-processing chosen on the {plan.n_target_train} labelled target "
            "cases: smallest component " + ", ".join(
                f"{r} {tuned.min_size_mm3[r]:g} mm^3" for r in REGIONS)
            + " (lesion-wise Dice there " + ", ".join(
                f"{r} {tuned.before['lesion_dice'][r]:.2f}->{tuned.after['lesion_dice'][r]:.2f}"
                for r in REGIONS) + ")")
        log(f"  {arm}: predict {plan.n_target_test} cases with {model}")
        pred = out / "predictions" / arm
        summary = predict_dir([model], test, pred, PredictOptions(overlap=plan.predict_overlap))
        if summary.failed:
            raise DemoError(f"{pred}: {len(summary.failed)} case(s) failed: "
                            + "; ".join(summary.failed.values()))
        result = evaluate_folder(pred, test, out / "eval" / arm)
        draw_evaluation_figures(result, out / "eval" / arm)


def read_results(out: Path) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, str]]]]:
    """(Dice table rows, per-case rows per model) from ``DIR/eval/<model>/``."""
    import csv

    summaries, per_case = {}, {}
    for arm in ARMS:
        folder = out / "eval" / arm
        if not (folder / "summary.json").is_file():
            raise DemoError(f"{folder}: no summary.json; the evaluate stage has not finished")
        summaries[arm] = json.loads((folder / "summary.json").read_text())
        with (folder / "per_case.csv").open(newline="") as fh:
            per_case[arm] = list(csv.DictReader(fh))
    return dice_rows(summaries), per_case


def summary_markdown(plan: DemoPlan, rows: Sequence[Mapping[str, Any]], text: str) -> str:
    """``summary.md`` of the demo folder: verdict, Dice table, what ran."""
    lines = ["# Transfer learning on a new site", "", f"**{text}**", "",
             f"Dice on the {plan.n_target_test} held-out target-site cases (mean ± sample sd "
             "over cases; legacy BraTS Dice per region, then the BraTS 2023 lesion-wise Dice; "
             "`eval/<model>/` has every metric). Each model's post-processing (smallest "
             "component per region) was chosen on the labelled target cases, never on these:",
             "",
             table_markdown(rows), "## What ran", "",
             *[f"    {line.strip()}" for line in describe_plan(plan)], "",
             "The target runs' learning curves are validations on the test cases, for "
             "monitoring; the table scores each target run's `last/` model (the full budget) "
             "and the source run's `best/` (chosen on source validation cases), so the test "
             "cases select nothing.", "",
             "Figures: `dice.png` (the table), `curves.png` (validation Dice on the test cases "
             "vs step), `overlay_scratch.png` / `overlay_transfer.png` (one test case, the "
             "transfer model's median by WT Dice); `timings.json`: seconds per stage."]
    return "\n".join(lines) + "\n"


def run_report(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """summary.md, dice.png, curves.png, timings.json, hardware.json, then report.html."""
    from glioseg.report.demo_figures import plot_curves, plot_dice
    from glioseg.report.figures import show_case
    from glioseg.report.html import write_report

    rows, per_case = read_results(out)
    text = verdict(rows, plan.n_target_train, plan.target_steps)
    timings = {s: float(m["seconds"]) for s in STAGES[:-1] if (m := stage_done(out, s))}
    timings["total (stages 1-5)"] = sum(timings.values())
    io_atomic.write_text(out / "summary.md", summary_markdown(plan, rows, text))
    io_atomic.write_json(out / "timings.json", {"seconds per stage": timings})
    io_atomic.write_json(out / "hardware.json", hardware())
    io_atomic.write_json(out / ".report.json", REPORT_SPEC)
    zero = next((r["mean"] for r in rows if r["model"] == "source-only"), None)
    plot_dice(out / "dice.png", rows, per_case)
    curves = {arm: read_val_records(out / "runs" / arm / "metrics.jsonl")
              for arm in ("scratch", "transfer")}
    plot_curves(out / "curves.png", curves, zero, plan.n_target_train)
    # One test case (the transfer model's median by WT Dice), each target model's prediction.
    cases = sorted(per_case["transfer"], key=lambda c: float(c["WT_dice"]))
    case_id = cases[len(cases) // 2]["case_id"]
    for arm in ("scratch", "transfer"):
        show_case(_raw(out, "target_test") / case_id, out / f"overlay_{arm}.png",
                  pred=out / "predictions" / arm / f"{case_id}.nii.gz")
    write_report(out, title="glioseg demo: transfer learning on a new site")
    log(f"  {text}")


RUNNERS: dict[str, Callable[[Path, DemoPlan, Callable[[str], None]], None]] = {
    "data": run_data, "shift": run_shift_stage, "source": run_source, "target": run_target,
    "evaluate": run_evaluate, "report": run_report,
}

STAGE_TITLES: dict[str, str] = {
    "data": "synthetic source and target cohorts, preprocessed",
    "shift": "domain shift, source vs target",
    "source": "train on the source site",
    "target": "fine-tune vs scratch on the labelled target cases",
    "evaluate": "predict and evaluate the held-out target cases",
    "report": "figures, summary.md and report.html",
}


def _stage_work(stage: str, head: str, out: Path, plan: DemoPlan, log: Callable[[str], None]
                ) -> Callable[[], dict[str, Any]]:
    """The work of a stage not done yet: print its head line, run it, time it."""
    def work() -> dict[str, Any]:
        log(head)
        return timed(lambda: RUNNERS[stage](out, plan, log))()
    return work


def run_demo(out: str | Path, plan: DemoPlan, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Run (or resume) the demo into ``out``.

    Returns:
        ``{"rows": Dice table rows, "table": Markdown, "verdict", "report": report.html path,
        "ran": stages run now, "skipped": stages skipped, "wall_s": this call's seconds}``.

    Raises:
        DemoError: ``out`` holds a demo made with another plan, or a stage failed in a way
            the message names.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_plan(out, json.loads(json.dumps(asdict(plan))), DemoError)
    t_all = time.perf_counter()
    ran, skipped = [], []
    for i, stage in enumerate(STAGES, 1):
        head = f"[{i}/{len(STAGES)}] {stage}: {STAGE_TITLES[stage]}"
        marker, now = run_if_not_done(stage_marker(out, stage),
                                      _stage_work(stage, head, out, plan, log))
        if not now:
            log(f"{head} - done before ({marker['seconds']:.0f} s), skipped")
        (ran if now else skipped).append(stage)
    rows, _ = read_results(out)
    return {"rows": rows, "table": table_markdown(rows),
            "verdict": verdict(rows, plan.n_target_train, plan.target_steps),
            "report": out / "report.html", "ran": ran, "skipped": skipped,
            "wall_s": time.perf_counter() - t_all}

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
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glioseg import io_atomic
from glioseg.errors import GliosegError
from glioseg.records import read_jsonl
from glioseg.report.savefig import save_figure
from glioseg.runinfo import hardware

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

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

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


class DemoError(GliosegError, ValueError):
    """A demo that cannot run or resume; the message names the folder and the problem."""


@dataclass(frozen=True)
class DemoPlan:
    """Every knob of a demo. Steps are optimiser steps; ``patch`` is the cube edge (voxels) of
    every training run."""

    name: str
    """``default`` (2 mm, CPU), ``quick`` (tests) or ``full`` (1 mm, GPU)."""
    spacing: float
    """Voxel size (mm) of the synthetic cohorts."""
    config: str
    """Config preset of every training run (``small`` or ``full``)."""
    n_source: int
    """Source-site cases (``n_val`` of them validate the source model)."""
    n_target_train: int
    """Labelled target cases both target arms train on."""
    n_target_test: int
    """Held-out target cases: the shift test, the learning curves and the Dice table."""
    source_steps: int
    target_steps: int
    """Step budget of each target arm (equal for scratch and transfer)."""
    patch: int
    source_val_every: int
    target_val_every: int
    target_warmup: int
    """Learning-rate warm-up steps of the target arms."""
    n_val: int
    """Source cases held out to validate (and choose ``best/`` of) the source model."""
    permutations: int
    """Permutations per MMD test of the shift stage."""
    strategy: str = "full"
    """Fine-tuning strategy of the transfer arm (``glioseg.transfer.freeze``)."""
    data_seed: int = 2026
    """Seed of the source cohort; the target cohorts use ``data_seed + 1``."""
    layout: str = "brats2023"
    """BraTS layout of the synthetic cohorts (2023: lesion-wise metrics, BraTS-SSA target ids)."""
    synth_workers: int = 2
    predict_overlap: float = 0.5
    """Sliding-window overlap of the predict stage (``glioseg predict --overlap``)."""
    overrides: tuple[str, ...] = ()
    """Extra ``key=value`` config overrides of every training run."""


def plan_for(*, quick: bool = False, full: bool = False) -> DemoPlan:
    """The plan of ``glioseg demo`` (default), ``--quick`` or ``--full``."""
    if quick and full:
        raise DemoError("--quick and --full exclude each other")
    if quick:  # ~30 s: a test of the plumbing; the numbers mean nothing
        return DemoPlan(name="quick", spacing=4.0, config="small", n_source=3, n_target_train=2,
                        n_target_test=2, source_steps=6, target_steps=4, patch=32,
                        source_val_every=3, target_val_every=2, target_warmup=1, n_val=1,
                        permutations=50, predict_overlap=0.0)
    if full:  # 1 mm with the full preset: for a GPU (hours on a CPU)
        return DemoPlan(name="full", spacing=1.0, config="full", n_source=40, n_target_train=4,
                        n_target_test=10, source_steps=4000, target_steps=600, patch=128,
                        source_val_every=500, target_val_every=100, target_warmup=20, n_val=5,
                        permutations=1000, synth_workers=8)
    return DemoPlan(name="default", spacing=2.0, config="small", n_source=12, n_target_train=4,
                    n_target_test=8, source_steps=300, target_steps=100, patch=48,
                    source_val_every=50, target_val_every=25, target_warmup=10, n_val=4,
                    permutations=1000)


def describe_plan(plan: DemoPlan) -> list[str]:
    """The plan as the lines ``glioseg demo`` prints before it starts."""
    return [
        f"glioseg demo ({plan.name}): {plan.spacing:g} mm synthetic cohorts, "
        f"config preset '{plan.config}', {plan.patch}^3 training patches",
        f"  data:     {plan.n_source} source-site cases; target site: {plan.n_target_train} "
        f"labelled + {plan.n_target_test} held-out test cases ({plan.layout} layout)",
        f"  shift:    MMD tests, source vs target test cases, {plan.permutations} permutations",
        f"  source:   {plan.source_steps} steps on {plan.n_source - plan.n_val} source cases "
        f"({plan.n_val} validate)",
        f"  target:   {plan.target_steps} steps on the {plan.n_target_train} labelled target "
        f"cases, twice: fine-tuned from the source model (strategy {plan.strategy}) and from "
        "scratch",
        f"  evaluate: BraTS metrics of source-only / scratch / transfer on the "
        f"{plan.n_target_test} test cases",
        "  report:   report.html (shift, curves, Dice table, overlays)",
    ]


# --------------------------------------------------------------------------- plan -> runs

def _list(values: Sequence[Any]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def cohort_specs(plan: DemoPlan) -> dict[str, tuple[str, int, int, int]]:
    """cohort -> (site profile, seed, first case index, number of cases). The two target
    cohorts are disjoint index ranges of one target-site stream: no scan is in both."""
    s = plan.data_seed
    return {
        "source": ("source", s, 0, plan.n_source),
        "target_train": ("target", s + 1, 0, plan.n_target_train),
        "target_test": ("target", s + 1, plan.n_target_train, plan.n_target_test),
    }


def source_overrides(plan: DemoPlan, caches: Mapping[str, Path]) -> list[str]:
    """Config overrides of the source model's run."""
    p = plan.patch
    return [f"data.cache_dir={caches['source']}", f"data.n_val={plan.n_val}",
            f"data.patch_size=[{p},{p},{p}]", f"train.steps={plan.source_steps}",
            f"train.val_every={plan.source_val_every}",
            f"train.ckpt_every={plan.source_val_every}", "train.seed=0", *plan.overrides]


def target_overrides(plan: DemoPlan, caches: Mapping[str, Path],
                     init_from: Path | None) -> list[str]:
    """Config overrides of a target arm: the labelled target cases, validated on the target
    test cache; ``init_from`` (a model folder) makes it the transfer arm, None the scratch arm.
    Both arms get the same steps, schedule, patch and seed."""
    p = plan.patch
    ov = [f"data.cache_dir={caches['target_train']}", f"data.val_cache={caches['target_test']}",
          f"data.patch_size=[{p},{p},{p}]", f"train.steps={plan.target_steps}",
          f"train.val_every={plan.target_val_every}",
          f"train.ckpt_every={plan.target_val_every}",
          f"train.log_every={min(10, plan.target_steps)}",
          f"optim.warmup_steps={plan.target_warmup}", "train.seed=0", *plan.overrides]
    if init_from is not None:
        ov += [f"transfer.init_from={init_from}", f"transfer.strategy={plan.strategy}"]
    return ov


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


def val_records(metrics_path: Path) -> list[dict[str, float]]:
    """Validation records (``split == "val"``) of a run's ``metrics.jsonl``:
    ``[{"step", "dice_WT", "dice_TC", "dice_ET", "dice_mean"}]``; bad lines are skipped."""
    if not metrics_path.is_file():
        return []
    return [{k: float(rec[k]) for k in ("step", "dice_WT", "dice_TC", "dice_ET", "dice_mean")
             if k in rec}
            for rec in read_jsonl(metrics_path) if rec.get("split") == "val"]


# --------------------------------------------------------------------------- figures

def plot_dice(path: Path, rows: Sequence[Mapping[str, Any]], per_case: Mapping[str, Any]
              ) -> Path:
    """Bars: mean Dice per region and model on the target test cases; dots: the cases.

    ``per_case``: model -> list of per-case rows of ``per_case.csv`` (``WT_dice`` ...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"source-only": "tab:gray", "scratch": "tab:blue", "transfer": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / max(len(rows), 1)
    for j, r in enumerate(rows):
        for i, region in enumerate((*REGIONS, "mean")):
            x = i + (j - (len(rows) - 1) / 2) * width
            ax.bar(x, r[region], width * 0.95, color=colors.get(r["model"], "tab:green"),
                   label=r["label"] if i == 0 else None)
            if region != "mean":
                vals = [float(c[f"{region}_dice"]) for c in per_case.get(r["model"], [])]
                ax.scatter([x] * len(vals), vals, s=9, color="k", zorder=3)
    ax.set_xticks(range(len(REGIONS) + 1), [*REGIONS, "mean"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice on the held-out target cases")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Target site: source model vs scratch vs transfer (bars: mean, dots: cases)")
    return save_figure(fig, path)


def plot_curves(path: Path, curves: Mapping[str, Sequence[Mapping[str, float]]],
                zero_shot: float | None, n_train: int) -> Path:
    """Validation Dice on the target test cases vs step, one line per target arm (mean of
    WT/TC/ET solid, WT dashed); the source model's table mean as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"scratch": "tab:blue", "transfer": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm, recs in curves.items():
        if not recs:
            continue
        steps = [r["step"] for r in recs]
        ax.plot(steps, [r["dice_mean"] for r in recs], marker="o", color=colors.get(arm),
                label=f"{arm}: mean of WT/TC/ET")
        ax.plot(steps, [r["dice_WT"] for r in recs], ls="--", color=colors.get(arm), alpha=0.6,
                label=f"{arm}: WT")
    if zero_shot is not None and not math.isnan(zero_shot):
        ax.axhline(zero_shot, color="grey", ls=":", label="source model, no target labels")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("Dice on the target test cases")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Learning on {n_train} labelled target cases (equal step budgets)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- stage bookkeeping

def _plan_doc(plan: DemoPlan) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(plan)))


def _check_plan(out: Path, plan: DemoPlan) -> None:
    """Refuse a folder made with another plan; record this plan in a fresh one."""
    path = out / ".stages" / "plan.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != _plan_doc(plan):
            raise DemoError(f"{out}: holds a demo made with another plan ({saved.get('name')}, "
                            f"this is {plan.name}); use another --out")
        return
    io_atomic.write_json(path, _plan_doc(plan))


def stage_done(out: Path, stage: str) -> dict[str, Any] | None:
    """The marker of a finished stage (``{"seconds": ...}``), None when it has not finished."""
    path = out / ".stages" / f"{stage}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _mark_done(out: Path, stage: str, seconds: float, **extra: Any) -> None:
    io_atomic.write_json(out / ".stages" / f"{stage}.json",
                         {"seconds": round(seconds, 1), **extra})


# --------------------------------------------------------------------------- stages

def _caches(out: Path) -> dict[str, Path]:
    return {c: (out / "data" / "cache" / c).resolve() for c in COHORTS}


def _raw(out: Path, cohort: str) -> Path:
    return out / "data" / "raw" / cohort


def run_data(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """Write the three synthetic cohorts and preprocess them (both resume case by case)."""
    from glioseg.data.synthetic import write_cohort
    from glioseg.preprocess.run import preprocess_dir

    for cohort, (site, seed, start, n) in cohort_specs(plan).items():
        log(f"  {cohort}: {n} '{site}' cases")
        write_cohort(_raw(out, cohort), n_cases=n, layout=plan.layout, site=site, seed=seed,
                     spacing=plan.spacing, start=start, workers=plan.synth_workers)
        preprocess_dir(_raw(out, cohort), out / "data" / "cache" / cohort, spacing=None)


def run_shift_stage(out: Path, plan: DemoPlan, log: Callable[[str], None]) -> None:
    """``glioseg shift`` of the target test cases against the source cohort."""
    from glioseg.analysis.shift_run import run_shift

    doc = run_shift(_raw(out, "source"), _raw(out, "target_test"), out / "shift",
                    n_permutations=plan.permutations, seed=0)
    log(f"  {doc['verdict']}")


def _fit(overrides: Sequence[str], config: str, run_dir: Path) -> dict[str, Any]:
    from glioseg.train import config as C
    from glioseg.train.fit import fit

    return fit(C.load_config(config, list(overrides)), run_dir)


def _log_val(log: Callable[[str], None], name: str, run_dir: Path) -> None:
    recs = val_records(run_dir / "metrics.jsonl")
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
        evaluate_folder(pred, test, out / "eval" / arm, figures=True)


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
    curves = {arm: val_records(out / "runs" / arm / "metrics.jsonl")
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
    _check_plan(out, plan)
    t_all = time.perf_counter()
    ran, skipped = [], []
    for i, stage in enumerate(STAGES, 1):
        head = f"[{i}/{len(STAGES)}] {stage}: {STAGE_TITLES[stage]}"
        marker = stage_done(out, stage)
        if marker is not None:
            log(f"{head} - done before ({marker['seconds']:.0f} s), skipped")
            skipped.append(stage)
            continue
        log(head)
        t0 = time.perf_counter()
        RUNNERS[stage](out, plan, log)
        _mark_done(out, stage, time.perf_counter() - t0)
        ran.append(stage)
    rows, _ = read_results(out)
    return {"rows": rows, "table": table_markdown(rows),
            "verdict": verdict(rows, plan.n_target_train, plan.target_steps),
            "report": out / "report.html", "ran": ran, "skipped": skipped,
            "wall_s": time.perf_counter() - t_all}

"""``glioseg study label-efficiency``: the measured payoff of transfer learning.

On synthetic cohorts (``glioseg.data.synthetic``) at one spacing:

- a **source** site (the ``source`` profile) with many labelled cases;
- a **target** site (the calibrated ``target`` profile: thicker slices, bias, noise, somewhat
  compressed contrast, larger tumours) with a *pool* of labelled cases from which each seed
  draws 1, 2, 4, 8, a set of *unlabelled* scans and a held-out *test* set. The self-supervised
  pretraining sees every target scan but the test set (the unlabelled ones and the pool's
  images, never a label), as a new site would pretrain on all it has.

Step budgets: at ``n`` labelled cases every arm gets the same budget, ``steps_per_case * n``
clamped to ``[min_steps, max_steps]`` (50 x n in [100, 250] by default), so that more labelled
cases get the steps to be learnt from; with one equal budget for every n (the study before
2026-12: 60 steps) nothing converged and scratch stayed flat in n. ``steps`` > 0 restores one
fixed budget. Results are means over seeds with 95% confidence intervals (Student t).

Arms, each given the same number of optimiser steps on the target's labelled cases:

- ``scratch``: random initialisation;
- ``source``: fine-tuned from the model trained on the source site, once per strategy
  (``full``, ``frozen-encoder``, ``gradual``, ``discriminative``; ``glioseg.transfer.freeze``);
- ``self-supervised``: fine-tuned from Models Genesis pretraining on the target's unlabelled
  scans (``train.task=genesis``);
- the sequence-set scenario: a source model trained on FLAIR + T1ce only, fine-tuned on a
  target that has T2 + T1 only (``seq-source``), against ``seq-scratch`` on T2 + T1.

A seed picks which pool cases are labelled (nested: the first ``n`` of one permutation, so a
larger set contains the smaller ones) and seeds the training run. Every target run validates
on the target test cache (``data.val_cache``) every ``val_every`` steps; the last record is
the arm's test Dice and the records before it give the time-to-target: the first step (and
seconds) at which an arm reaches the final Dice of the scratch arm with the same labelled
cases and seed.

Layout of the study folder::

    DIR/data/raw/<cohort>/, DIR/data/cache/<cohort>/      source, target_pool, target_test,
                                                          target_unlabelled
    DIR/runs/pretrain/<run>/                               source, source-flair-t1ce, genesis
    DIR/runs/target/<arm>-<strategy>-n<n>-s<seed>/        one training run per row
    DIR/results.csv, summary.md, study.json, *.png         (``glioseg report DIR`` renders them)

A run is finished when its folder holds ``result.json`` (a marker of
``glioseg.workflows.runner.run_if_not_done``); a re-run of the study skips finished runs (and
``fit`` resumes an interrupted one from its ``last.pt``), so the study is resumable.

This module runs the study; its plan and run specs are ``glioseg.workflows.study_plan``, its
statistics ``study_stats``, its tables ``study_tables`` and its figures
``glioseg.report.study_figures``.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.io_atomic import write_json, write_text
from glioseg.workflows.overrides import build_config
from glioseg.workflows.runner import prepare_cohort, run_if_not_done, val_records
from glioseg.workflows.study_plan import (
    Cohorts,
    RunSpec,
    StudyError,
    StudyPlan,
    pretrain_specs,
    quick_plan,
    study_cohorts,
    target_specs,
)
from glioseg.workflows.study_stats import (
    LESION_KEYS,
    REGION_KEYS,
    acceptance,
    label_efficiency_checks,
    mean_curves,
    result_rows,
    scratch_final,
    summarise,
)
from glioseg.workflows.study_tables import finite, summary_markdown, write_results_csv

__all__ = ["StudyError", "StudyPlan", "quick_plan", "run_study"]

def prepare_cohorts(out: Path, plan: StudyPlan) -> Cohorts:
    """Write the synthetic cohorts (brats2023 layout) and preprocess them to caches; both steps
    skip what is already there. The unlabelled cohort holds the pool's scans too and keeps its
    segmentation files, but the self-supervised pretraining (``train.task=genesis``) never
    reads them: it samples patches uniformly and its target is the image itself."""
    from glioseg.preprocess.cache import open_cache

    caches: dict[str, Path] = {}
    specs = study_cohorts(plan)
    for name, spec in specs.items():
        if name == "target_unlabelled" and not plan.self_supervised:
            continue
        ranges = [spec, specs["target_pool"]] if name == "target_unlabelled" else [spec]
        caches[name] = prepare_cohort(out / "data" / "raw" / name, out / "data" / "cache" / name,
                                      ranges, layout="brats2023", spacing=plan.spacing,
                                      workers=plan.synth_workers)
    pool = sorted(c.case_id for c in open_cache(caches["target_pool"]))
    return Cohorts(caches, tuple(pool))


def _clean_run(run_dir: Path) -> None:
    """Drop the resumable state of a finished target run (``*.pt``, ``best/``)."""
    for name in ("last.pt", "previous.pt", "best.pt"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "best", ignore_errors=True)


def run_one(spec: RunSpec, runs_dir: Path, plan: StudyPlan) -> dict[str, Any]:
    """Train ``spec`` into ``runs_dir/<group>/<name>`` unless its ``result.json`` exists (then
    read it); returns the result: the spec, the final test Dice, seconds and the val curve.

    Raises:
        StudyError: the finished run was made with other overrides, or a pretraining run it
            starts from has not finished.
    """
    run_dir = runs_dir / spec.group / spec.name
    overrides = spec.overrides.strings()

    def same_settings(done: Mapping[str, Any]) -> None:
        if done.get("overrides") != overrides:
            raise StudyError(f"{run_dir}: finished with other settings than this study asks "
                             "for (another --steps, --seeds or plan?); use another --out")

    def train() -> dict[str, Any]:
        for dep in spec.depends:
            if not (runs_dir / "pretrain" / dep / "result.json").is_file():
                raise StudyError(f"{run_dir}: needs the pretraining run {dep}, which has not "
                                 "finished")
        return _train(spec, run_dir, plan)

    result, ran = run_if_not_done(run_dir / "result.json", train, same_settings)
    if ran and spec.group == "target" and not plan.keep_checkpoints:
        _clean_run(run_dir)
    return result


def _train(spec: RunSpec, run_dir: Path, plan: StudyPlan) -> dict[str, Any]:
    """Train one run and read its result (``run_one``'s, before it is recorded)."""
    from glioseg.metrics_log import read_metrics
    from glioseg.train.fit import fit

    cfg = build_config(plan.config, spec.overrides)
    t0 = time.perf_counter()
    fit(cfg, run_dir)
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir)
    curve = val_records(records, ("step", "elapsed_s", *REGION_KEYS))
    last = curve[-1] if curve else {}
    seconds = max((float(r.get("elapsed_s", 0.0)) for r in records), default=wall)
    result = {**asdict(spec), "overrides": spec.overrides.strings(), "steps": cfg.train.steps,
              "seconds": round(seconds, 2), "wall_s": round(wall, 2),
              **{k: last.get(k, math.nan) for k in REGION_KEYS}, "curve": curve}
    if spec.group == "target" and plan.lesion_wise and cfg.data.val_cache:
        result.update(lesion_scores(run_dir / "last", Path(cfg.data.val_cache)))
    return result


def lesion_scores(model_dir: Path, cache_dir: Path) -> dict[str, float]:
    """Mean lesion-wise Dice (BraTS 2023 rules, the cases' own spacing) of ``model_dir`` on the
    cached cases of ``cache_dir``, predicted as validation does (whole box, threshold 0.5, no
    post-processing)."""
    import torch

    from glioseg.data.labels import MODALITIES, labels_from_regions
    from glioseg.evaluate.folder import score_labels
    from glioseg.infer.predict import load_model, model_divisor
    from glioseg.preprocess.cache import open_cache
    from glioseg.train.loop import predict_logits

    model, card = load_model(model_dir)
    channels = [MODALITIES.index(m) for m in card.modalities]
    sums = {k: 0.0 for k in LESION_KEYS}
    cases = open_cache(cache_dir)
    for case in cases:
        image = torch.from_numpy(np.array(case.image[channels], dtype=np.float32))[None]
        logits = predict_logits(model, image, mode="whole", divisor=model_divisor(model))[0]
        labels = labels_from_regions((logits > 0).numpy())
        scores = score_labels(labels, np.asarray(case.labels), "brats2023", scheme="brats2023",
                              case_id=case.case_id, lesion_spacing=case.meta.get("spacing"))
        for r in ("WT", "TC", "ET"):
            sums[f"lesion_dice_{r}"] += scores[f"{r}_lesion_dice"] / len(cases)
    sums["lesion_dice_mean"] = float(np.mean([sums[f"lesion_dice_{r}"]
                                              for r in ("WT", "TC", "ET")]))
    return sums


# --------------------------------------------------------------------------- analysis

# --------------------------------------------------------------------------- the study

FIGURES = ("dice_vs_labelled.png", "time_to_target.png", "curves.png", "sequence_sets.png")

REPORT_SPEC: dict[str, Any] = {
    "skip": ["data", "runs/target", "runs/*/*/best", "runs/*/*/tb", "runs/*/*/last"],
    "order": ["runs", "runs/pretrain", "runs/pretrain/source"],
    "titles": {
        "runs": "Pretraining runs (the target runs are in runs/target, one per results.csv row)",
        "runs/pretrain/source": "Source model (4 sequences, source site)",
        "runs/pretrain/genesis": "Self-supervised pretraining (Models Genesis, unlabelled "
                                 "target scans)",
    },
}
"""``.report.json`` of the study folder (``glioseg.report.html``): the report shows the tables,
the figures and the pretraining runs, not the cohorts or the one-per-row target runs."""


def _pretrain_info(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: {"steps": r["steps"], "seconds": r["seconds"],
                   "dice_mean": r.get("dice_mean", math.nan),
                   "dice_WT": r.get("dice_WT", math.nan)} for name, r in results.items()}


def _draw_figures(out: Path, plan: StudyPlan, results: Sequence[Mapping[str, Any]],
                  rows: Sequence[Mapping[str, Any]], summ: Sequence[Mapping[str, Any]],
                  n_acc: int, zero: float | None) -> list[str]:
    """The study's figures (``FIGURES``; the sequence sets only when that scenario ran)."""
    from glioseg.report import study_figures as SF

    SF.plot_dice_vs_labelled(out / FIGURES[0], summ, zero)
    SF.plot_time_to_target(out / FIGURES[1], summ)
    SF.plot_curves(out / FIGURES[2], mean_curves(results, n_acc), n_acc,
                   scratch_final(results, n_acc), zero)
    figures = list(FIGURES[:3])
    if any(r["arm"].startswith("seq-") for r in rows):
        SF.plot_sequence_sets(out / FIGURES[3], rows, plan.seq_source_modalities,
                              plan.seq_target_modalities)
        figures.append(FIGURES[3])
    return figures


def write_outputs(out: Path, plan: StudyPlan, results: Sequence[Mapping[str, Any]],
                  pretrain: Mapping[str, Mapping[str, Any]], wall_s: float) -> dict[str, Any]:
    """results.csv, summary.md, the figures and study.json; returns the study.json document."""
    rows = result_rows(results)
    summ = summarise(rows)
    n_acc = plan.acceptance_n if plan.acceptance_n in plan.n_labelled else plan.n_labelled[0]
    accept = acceptance(rows, n_acc)
    checks = label_efficiency_checks(summ)
    info = _pretrain_info(pretrain)
    write_results_csv(out / "results.csv", rows)
    write_json(out / ".report.json", REPORT_SPEC, default=str)
    text = summary_markdown(summ, accept, info, plan, checks)
    write_text(out / "summary.md", text)
    figures = _draw_figures(out, plan, results, rows, summ, n_acc,
                            info.get("source", {}).get("dice_mean"))
    doc = {"kind": "label-efficiency", "verdict": accept["verdict"], "acceptance": accept,
           "checks": checks,
           "summary": summ, "pretraining": info, "figures": figures,
           "results": "results.csv", "table": "summary.md", "wall_s": round(wall_s, 1),
           "runs_wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in
                                    (*results, *pretrain.values())), 1),
           "plan": asdict(plan)}
    write_json(out / "study.json", finite(doc), default=str)
    return doc


def run_study(out: str | Path, plan: StudyPlan) -> dict[str, Any]:
    """Run (or resume) the label-efficiency study into ``out``; returns the study.json document.

    Raises:
        StudyError: a finished run in ``out`` was made with other settings.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohorts = prepare_cohorts(out, plan)
    runs = out / "runs"
    specs = pretrain_specs(out, plan, cohorts) + target_specs(out, plan, cohorts)
    pretrain: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    bar = tqdm(specs, desc="study arms", unit="run", position=0)
    for spec in bar:
        bar.set_postfix_str(f"{spec.group}/{spec.name}")
        res = run_one(spec, runs, plan)
        if spec.group == "pretrain":
            pretrain[spec.name] = res
        else:
            results.append(res)
    bar.close()
    return write_outputs(out, plan, results, pretrain, time.perf_counter() - t0)

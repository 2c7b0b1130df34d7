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

A run is finished when its folder holds ``result.json``; a re-run of the study skips finished
runs (and ``fit`` resumes an interrupted one from its ``last.pt``), so the study is resumable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.errors import GliosegError
from glioseg.io_atomic import write_json
from glioseg.report.savefig import save_figure

STRATEGIES: tuple[str, ...] = ("full", "frozen-encoder", "gradual", "discriminative")
"""Fine-tuning strategies of the ``source`` arm (``glioseg.transfer.freeze.STRATEGIES``)."""

REGION_KEYS: tuple[str, ...] = ("dice_WT", "dice_TC", "dice_ET", "dice_mean")

LESION_KEYS: tuple[str, ...] = ("lesion_dice_WT", "lesion_dice_TC", "lesion_dice_ET",
                                "lesion_dice_mean")
"""BraTS 2023 lesion-wise Dice of a target run's final model on the test cases (no
post-processing), ``lesion_scores``."""
"""Test-Dice columns of a result row."""

CSV_COLUMNS: tuple[str, ...] = (
    "arm", "strategy", "modalities", "n_labelled", "seed", "steps", "seconds", *REGION_KEYS,
    *LESION_KEYS,
    "target_dice", "steps_to_target", "seconds_to_target", "cases", "run",
)
"""Columns of ``results.csv``, one row per arm x n_labelled x seed."""

COHORTS: tuple[str, ...] = ("source", "target_pool", "target_test", "target_unlabelled")

FINETUNED_ARMS: tuple[str, ...] = ("source",)
"""Arms that start from a supervised source model with the target's own input layer (they
train at ``StudyPlan.finetune_lr``). ``seq-source`` is not one: none of its target sequences
was in the source, so its first layer starts from the mean of the source filters and must
learn at a from-scratch rate (at n=2, seed 1: test Dice 0.08 at lr 1e-4, 0.21 at 1e-3, 0.28 at
the preset's 3e-3, seq-scratch 0.27)."""


class StudyError(GliosegError, ValueError):
    """A study that cannot run or resume; the message names the folder and the problem."""


@dataclass(frozen=True)
class StudyPlan:
    """Every knob of the study (the defaults are the ~20-25 min study on a 2-core CPU).

    Cohort sizes are case counts; steps are optimiser steps; patch sizes are cube edges in
    voxels (multiples of the model's divisor).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds: each draws the labelled target cases and seeds the training runs."""
    n_labelled: tuple[int, ...] = (1, 2, 4, 8)
    """Numbers of labelled target cases."""
    steps: int = 0
    """One fixed step budget for every target run; 0: the per-case budget below."""
    steps_per_case: int = 50
    """Budget per labelled case (``budget``): every arm at ``n`` gets the same steps."""
    min_steps: int = 100
    max_steps: int = 250
    """Bounds of the per-case budget."""
    val_every: int = 0
    """Test-set validation interval of target runs (the resolution of time-to-target);
    0: a quarter of the run's budget."""
    patch: int = 48
    """Training patch of target runs: the same as the pretraining's (``pretrain_patch``). The
    model's instance norms take their statistics from the patch, so a fine-tuned model must
    see patches of the size it was trained on: fine-tuning the 48^3 source model on 32^3
    patches (3x faster steps) *lowers* its target Dice (0.58 zero-shot -> 0.48 after 60
    steps at lr 1e-4, and also with 8 labelled cases), while 48^3 patches raise it (-> 0.61)."""
    warmup_steps: int = 6
    """Learning-rate warm-up of target runs (every arm)."""
    lr: float = 0.0
    """Peak learning rate of the target runs that start from random or self-supervised
    weights or with a new input layer (``scratch``, ``seq-scratch``, ``self-supervised``,
    ``seq-source``; 0: the preset's)."""
    finetune_lr: float = 1e-4
    """Peak learning rate of the target runs fine-tuned from a supervised source model
    (``source``): the preset's 3e-3, right for a random start, moves the
    pretrained weights so far in a few steps that the target Dice first drops well below the
    source model's zero-shot Dice (0.58 -> 0.35 after 15 steps); 1e-4 keeps what transfers.
    0: the same as ``lr``."""
    source_steps: int = 300
    """Steps of the source model (4 sequences)."""
    seq_source_steps: int = 200
    """Steps of the FLAIR + T1ce source model of the sequence-set scenario."""
    pretrain_steps: int = 300
    """Steps of the self-supervised (Models Genesis) pretraining on the target scans."""
    pretrain_patch: int = 48
    """Training patch of the three pretraining runs (the preset's)."""
    n_source: int = 20
    n_pool: int = 10
    n_test: int = 5
    n_unlabelled: int = 10
    spacing: float = 2.0
    """Voxel size (mm) of the synthetic cohorts."""
    data_seed: int = 2026
    """Seed of the synthetic cohorts (the source and target cohorts derive from it)."""
    strategies: tuple[str, ...] = ("full",)
    """Fine-tuning strategies of the ``source`` arm; the first is the main one (all four:
    ``STRATEGIES``; they cost a run each per seed at ``strategies_at``)."""
    strategies_at: tuple[int, ...] | None = (2,)
    """Numbers of labelled cases at which every strategy runs; at the others only
    ``strategies[0]`` does (None: every strategy at every n)."""
    self_supervised: bool = True
    """Include the self-supervised arm (and its pretraining)."""
    self_supervised_at: tuple[int, ...] | None = (1, 2)
    """Numbers of labelled cases at which the self-supervised arm runs (None: every n); its
    question is whether it helps with very few labels."""
    seq_n_labelled: tuple[int, ...] = ()
    """Numbers of labelled target cases of the sequence-set scenario (empty: skip it; the
    scenario with 2 cases adds 6 runs)."""
    seq_source_modalities: tuple[str, ...] = ("flair", "t1ce")
    seq_target_modalities: tuple[str, ...] = ("t2", "t1")
    config: str = "small"
    """Config preset or YAML of every run."""
    overrides: tuple[str, ...] = ()
    """Extra ``key=value`` overrides applied to every run (after the study's own)."""
    synth_workers: int = 2
    """Processes writing the synthetic cohorts."""
    keep_checkpoints: bool = False
    """Keep ``*.pt`` and ``best/`` of finished target runs (else only ``last/``, metrics and
    the result: ~60 MB less per run)."""
    acceptance_n: int = 2
    """Labelled cases at which the acceptance (fine-tuning beats scratch) is checked."""
    lesion_wise: bool = True
    """Score each target run's final model lesion-wise on the test cases (``LESION_KEYS``)."""

    def __post_init__(self) -> None:
        if not self.strategies:
            raise StudyError(f"the study needs at least one strategy of {', '.join(STRATEGIES)}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise StudyError(f"unknown strategy {bad[0]!r}; known: {', '.join(STRATEGIES)}")
        need = max((*self.n_labelled, *self.seq_n_labelled), default=0)
        if need > self.n_pool:
            raise StudyError(f"n_labelled up to {need} needs a target pool of at least {need} "
                             f"cases (n_pool={self.n_pool})")
        if not self.seeds or not self.n_labelled:
            raise StudyError("the study needs at least one seed and one n_labelled")
        if min(self.n_labelled) < 1:
            raise StudyError(f"n_labelled must be >= 1, got {list(self.n_labelled)}")
        if self.steps < 0 or self.val_every < 0:
            raise StudyError(f"steps ({self.steps}) and val_every ({self.val_every}) must be >= 0")
        if self.steps == 0 and not 1 <= self.min_steps <= self.max_steps:
            raise StudyError(f"the per-case budget needs 1 <= min_steps ({self.min_steps}) <= "
                             f"max_steps ({self.max_steps})")


def budget(plan: StudyPlan, n: int) -> int:
    """Steps of every target run at ``n`` labelled cases (see the module docstring)."""
    if plan.steps > 0:
        return plan.steps
    return int(min(max(plan.steps_per_case * n, plan.min_steps), plan.max_steps))


def val_interval(plan: StudyPlan, steps: int) -> int:
    """Validation interval of a target run of ``steps`` steps."""
    return plan.val_every if plan.val_every > 0 else max(1, steps // 4)


def quick_plan() -> StudyPlan:
    """A ~2-minute study: one seed, 2 labelled cases, short runs, small cohorts, 32^3 patches
    (pretraining too: see ``StudyPlan.patch``)."""
    return StudyPlan(seeds=(0,), n_labelled=(2,), steps=20, val_every=10, warmup_steps=2,
                     patch=32, pretrain_patch=32, source_steps=60, seq_source_steps=40,
                     pretrain_steps=30, n_source=6, n_pool=3, n_test=2, n_unlabelled=3)


# --------------------------------------------------------------------------- cohorts

@dataclass(frozen=True)
class Cohorts:
    """Cache folders of the study's cohorts and the ids of the target pool (sorted)."""

    caches: dict[str, Path]
    pool_ids: tuple[str, ...]


def _cohort_specs(plan: StudyPlan) -> dict[str, tuple[str, int, int, int]]:
    """cohort -> (site, seed, first index, count); the target cohorts are disjoint index
    ranges of one target stream, so no scan is in two of them."""
    s = plan.data_seed
    return {
        "source": ("source", s, 0, plan.n_source),
        "target_pool": ("target", s + 1, 0, plan.n_pool),
        "target_test": ("target", s + 1, plan.n_pool, plan.n_test),
        "target_unlabelled": ("target", s + 1, plan.n_pool + plan.n_test, plan.n_unlabelled),
    }


def prepare_cohorts(out: Path, plan: StudyPlan) -> Cohorts:
    """Write the synthetic cohorts (brats2023 layout) and preprocess them to caches; both steps
    skip what is already there. The unlabelled cohort keeps its segmentation files, but the
    self-supervised pretraining (``train.task=genesis``) never reads them: it samples patches
    uniformly and its target is the image itself."""
    from glioseg.data.synthetic import write_cohort
    from glioseg.preprocess.cache import open_cache
    from glioseg.preprocess.run import preprocess_dir

    caches: dict[str, Path] = {}
    specs = _cohort_specs(plan)
    for name, (site, seed, start, n) in specs.items():
        if name == "target_unlabelled" and not plan.self_supervised:
            continue
        raw, cache = out / "data" / "raw" / name, out / "data" / "cache" / name
        write_cohort(raw, n_cases=n, layout="brats2023", site=site, seed=seed,
                     spacing=plan.spacing, start=start, workers=plan.synth_workers)
        if name == "target_unlabelled":  # the pool's scans too (pretraining reads no label)
            _, pseed, pstart, pn = specs["target_pool"]
            write_cohort(raw, n_cases=pn, layout="brats2023", site=site, seed=pseed,
                         spacing=plan.spacing, start=pstart, workers=plan.synth_workers)
        preprocess_dir(raw, cache, spacing=None)
        caches[name] = cache
    pool = sorted(c.case_id for c in open_cache(caches["target_pool"]))
    return Cohorts(caches, tuple(pool))


def labelled_cases(pool_ids: Sequence[str], n: int, seed: int, data_seed: int) -> list[str]:
    """The ``n`` labelled target cases of ``seed``: the first ``n`` of a permutation of the
    pool drawn from ``default_rng([data_seed, seed])`` (nested in ``n``), in pool order."""
    if n > len(pool_ids):
        raise StudyError(f"{n} labelled cases asked for, the target pool has {len(pool_ids)}")
    perm = np.random.default_rng([data_seed, seed]).permutation(len(pool_ids))
    return [pool_ids[i] for i in sorted(perm[:n])]


# --------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class RunSpec:
    """One training run of the study: its folder name under ``runs/<group>/`` and its config
    overrides; ``arm``, ``strategy``, ``n_labelled``, ``seed`` fill the result row."""

    group: str
    name: str
    overrides: tuple[str, ...]
    arm: str = ""
    strategy: str = "none"
    n_labelled: int = 0
    seed: int = 0
    modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
    cases: tuple[str, ...] = ()
    depends: tuple[str, ...] = field(default=())
    """Names of pretraining runs this run starts from."""


def _list(values: Sequence[Any]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def pretrain_specs(out: Path, plan: StudyPlan, cohorts: Cohorts) -> list[RunSpec]:
    """The source model(s) and the self-supervised pretraining (run before the target runs)."""
    c = cohorts.caches
    p = plan.pretrain_patch
    common = (f"data.patch_size=[{p},{p},{p}]", "train.seed=0")
    specs = [RunSpec("pretrain", "source", (
        f"data.cache_dir={c['source']}", f"data.val_cache={c['target_test']}",
        f"train.steps={plan.source_steps}", f"train.val_every={max(plan.source_steps // 3, 1)}",
        f"train.ckpt_every={plan.source_steps}", *common), arm="source-model")]
    if plan.seq_n_labelled:
        mods = plan.seq_source_modalities
        specs.append(RunSpec("pretrain", "source-" + "-".join(mods), (
            f"data.cache_dir={c['source']}", f"data.val_cache={c['target_test']}",
            f"data.modalities={_list(mods)}", f"train.steps={plan.seq_source_steps}",
            f"train.val_every={max(plan.seq_source_steps // 2, 1)}",
            f"train.ckpt_every={plan.seq_source_steps}", *common),
            arm="seq-source-model", modalities=mods))
    if plan.self_supervised:
        specs.append(RunSpec("pretrain", "genesis", (
            f"data.cache_dir={c['target_unlabelled']}", "train.task=genesis",
            f"train.steps={plan.pretrain_steps}", f"train.ckpt_every={plan.pretrain_steps}",
            *common), arm="genesis-model"))
    return [replace(s, overrides=(*s.overrides, *plan.overrides)) for s in specs]


def target_specs(out: Path, plan: StudyPlan, cohorts: Cohorts) -> list[RunSpec]:
    """Every target run: arms x n_labelled x seeds and the sequence-set scenario; the runs at
    ``acceptance_n`` come first, then the sequence-set scenario, then the other n."""
    pre = out / "runs" / "pretrain"

    def arms(n: int) -> list[tuple[str, str, str]]:
        every = plan.strategies_at is None or n in plan.strategies_at
        out = [("scratch", "none", "")]
        out += [("source", s, str(pre / "source" / "last"))
                for s in (plan.strategies if every else plan.strategies[:1])]
        ssl_here = plan.self_supervised_at is None or n in plan.self_supervised_at
        if plan.self_supervised and ssl_here:
            out.append(("self-supervised", "full", str(pre / "genesis" / "last")))
        return out

    seq_src = pre / ("source-" + "-".join(plan.seq_source_modalities)) / "last"
    seq_arms = [("seq-scratch", "none", ""), ("seq-source", "full", str(seq_src))]
    specs = []
    # The acceptance's n first, so an interrupted study has the runs that decide it.
    first = sorted(plan.n_labelled, key=lambda n: (n != plan.acceptance_n, n))
    groups = [((), first[:1]), (plan.seq_target_modalities, plan.seq_n_labelled), ((), first[1:])]
    for mods, ns in groups:
        for n in ns:
            for seed in plan.seeds:
                ids = labelled_cases(cohorts.pool_ids, n, seed, plan.data_seed)
                for arm, strategy, init in (seq_arms if mods else arms(n)):
                    specs.append(_target_spec(plan, cohorts, arm, strategy, init, n, seed,
                                              ids, mods))
    return specs


def _target_spec(plan: StudyPlan, cohorts: Cohorts, arm: str, strategy: str, init: str, n: int,
                 seed: int, ids: Sequence[str], modalities: Sequence[str]) -> RunSpec:
    c, p = cohorts.caches, plan.patch
    steps = budget(plan, n)
    ov = [f"data.cache_dir={c['target_pool']}", f"data.val_cache={c['target_test']}",
          f"data.cases={_list(ids)}", f"data.patch_size=[{p},{p},{p}]",
          f"train.steps={steps}", f"train.val_every={val_interval(plan, steps)}",
          f"train.ckpt_every={steps}", f"train.log_every={min(10, steps)}",
          f"train.seed={seed}", f"optim.warmup_steps={plan.warmup_steps}"]
    lr = run_lr(plan, arm)
    if lr > 0:
        ov.append(f"optim.lr={lr}")
    if modalities:
        ov.append(f"data.modalities={_list(modalities)}")
    depends: tuple[str, ...] = ()
    if init:
        ov += [f"transfer.init_from={init}", f"transfer.strategy={strategy}"]
        depends = (Path(init).parent.name,)
    mods = tuple(modalities) or ("t1", "t1ce", "t2", "flair")
    return RunSpec("target", f"{arm}-{strategy}-n{n}-s{seed}", (*ov, *plan.overrides), arm=arm,
                   strategy=strategy, n_labelled=n, seed=seed, modalities=mods,
                   cases=tuple(ids), depends=depends)


def run_lr(plan: StudyPlan, arm: str) -> float:
    """Peak learning rate of ``arm``'s target runs (0: the preset's)."""
    if arm in FINETUNED_ARMS and plan.finetune_lr > 0:
        return plan.finetune_lr
    return plan.lr


def val_curve(records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The validation records of ``metrics.jsonl`` as ``[{"step", "elapsed_s", dice...}]``."""
    keep = ("step", "elapsed_s", *REGION_KEYS)
    return [{k: float(r[k]) for k in keep if k in r} for r in records if r.get("split") == "val"]


def _clean_run(run_dir: Path) -> None:
    """Drop the resumable state of a finished target run (``*.pt``, ``best/``)."""
    for name in ("last.pt", "previous.pt", "best.pt"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "best", ignore_errors=True)


def run_one(spec: RunSpec, runs_dir: Path, plan: StudyPlan) -> dict[str, Any]:
    """Train ``spec`` into ``runs_dir/<group>/<name>`` unless its ``result.json`` exists (then
    read it); returns the result: the spec, the final test Dice, seconds and the val curve."""
    from glioseg.train import config as C
    from glioseg.train.fit import fit, read_metrics

    run_dir = runs_dir / spec.group / spec.name
    done = run_dir / "result.json"
    overrides = list(spec.overrides)
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("overrides") != overrides:
            raise StudyError(f"{run_dir}: finished with other settings than this study asks "
                             "for (another --steps, --seeds or plan?); use another --out")
        return result
    for dep in spec.depends:
        if not (runs_dir / "pretrain" / dep / "result.json").is_file():
            raise StudyError(f"{run_dir}: needs the pretraining run {dep}, which has not finished")
    cfg = C.load_config(plan.config, overrides)
    t0 = time.perf_counter()
    fit(cfg, run_dir)
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir)
    curve = val_curve(records)
    last = curve[-1] if curve else {}
    seconds = max((float(r.get("elapsed_s", 0.0)) for r in records), default=wall)
    result = {**asdict(spec), "overrides": overrides, "steps": cfg.train.steps,
              "seconds": round(seconds, 2), "wall_s": round(wall, 2),
              **{k: last.get(k, math.nan) for k in REGION_KEYS}, "curve": curve}
    if spec.group == "target" and plan.lesion_wise and cfg.data.val_cache:
        result.update(lesion_scores(run_dir / "last", Path(cfg.data.val_cache)))
    write_json(done, result, default=str)
    if spec.group == "target" and not plan.keep_checkpoints:
        _clean_run(run_dir)
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

def time_to_target(curve: Sequence[Mapping[str, float]], target: float,
                   key: str = "dice_mean") -> tuple[float, float]:
    """(step, seconds) of the first validation record with ``key >= target``; (nan, nan) when
    the run never reaches it."""
    for r in curve:
        if r.get(key, -math.inf) >= target:
            return float(r["step"]), float(r.get("elapsed_s", math.nan))
    return math.nan, math.nan


def result_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target run (``CSV_COLUMNS``), with the time to reach the final mean Dice of
    the scratch run of the same labelled cases and seed (``seq-scratch`` for ``seq-*``)."""
    scratch = {(r["arm"], r["n_labelled"], r["seed"]): r for r in results
               if r["arm"] in ("scratch", "seq-scratch")}
    rows = []
    for r in results:
        ref_arm = "seq-scratch" if r["arm"].startswith("seq-") else "scratch"
        ref = scratch.get((ref_arm, r["n_labelled"], r["seed"]))
        target = float(ref["dice_mean"]) if ref else math.nan
        steps, secs = time_to_target(r["curve"], target) if ref else (math.nan, math.nan)
        rows.append({
            "arm": r["arm"], "strategy": r["strategy"], "modalities": "+".join(r["modalities"]),
            "n_labelled": r["n_labelled"], "seed": r["seed"], "steps": r["steps"],
            "seconds": r["seconds"], **{k: float(r[k]) for k in REGION_KEYS},
            **{k: float(r.get(k, math.nan)) for k in LESION_KEYS},
            "target_dice": target, "steps_to_target": steps, "seconds_to_target": secs,
            "cases": ";".join(r["cases"]), "run": f"runs/target/{r['name']}",
        })
    return rows


def arm_label(row: Mapping[str, Any]) -> str:
    """``scratch``, ``source/full``, ``self-supervised/full``, ``seq-source/full`` ..."""
    return row["arm"] if row["strategy"] == "none" else f"{row['arm']}/{row['strategy']}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd (across seeds) per arm and n_labelled; time-to-target averaged over the
    seeds that reached the target, ``reached`` counts them."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((arm_label(r), int(r["n_labelled"])), []).append(r)
    out = []
    for (label, n), rs in groups.items():
        rec: dict[str, Any] = {"arm": label, "n_labelled": n, "seeds": len(rs)}
        for k in (*REGION_KEYS, *LESION_KEYS, "steps_to_target", "seconds_to_target",
                  "seconds"):
            m, sd, k_n = _mean_sd([float(r[k]) for r in rs])
            rec[k], rec[f"{k}_sd"] = m, sd
            if k in REGION_KEYS:
                rec[f"{k}_ci"] = ci95(sd, k_n)
        rec["reached"] = sum(not math.isnan(float(r["steps_to_target"])) for r in rs)
        rec["steps"] = rs[0]["steps"]
        out.append(rec)
    return out


def ci95(sd: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of ``n`` values with sample sd
    ``sd`` (Student t, ``n - 1`` degrees of freedom); nan for fewer than 2 values."""
    if n < 2 or math.isnan(sd):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def label_efficiency_checks(summary: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the label-efficiency figure is for, checked on the summary:

    - ``scratch_rises``: scratch at the largest n is above scratch at the smallest, with
      non-overlapping 95% intervals;
    - ``transfer_not_below``: fine-tuning from the source model (``source/<first strategy>``)
      has a mean at or above scratch's at every n;
    - ``meet``: the smallest n from which on the fine-tuned arm's mean lies within scratch's
      95% interval (scratch has caught up within its uncertainty; None: it never does);
    - ``ssl``: per n where both ran, the self-supervised arm's mean minus scratch's, and
      ``ssl_helps``: whether it is above scratch at every such n <= 2.
    """
    by = {(s["arm"], s["n_labelled"]): s for s in summary}
    ns = sorted({n for arm, n in by if arm == "scratch"})
    ft_arm = next((a for a, _ in sorted(by) if a.startswith("source/")), None)
    out: dict[str, Any] = {"scratch_rises": None, "transfer_not_below": None, "meet": None,
                           "ssl": {}, "ssl_helps": None}
    if len(ns) >= 2:
        lo, hi = by[("scratch", ns[0])], by[("scratch", ns[-1])]
        out["scratch_rises"] = bool(hi["dice_mean"] - hi["dice_mean_ci"]
                                    > lo["dice_mean"] + lo["dice_mean_ci"])
        out["scratch_range"] = [lo["dice_mean"], hi["dice_mean"]]
    if ft_arm is not None:
        pairs = [(n, by[(ft_arm, n)], by[("scratch", n)]) for n in ns if (ft_arm, n) in by]
        out["transfer_not_below"] = all(f["dice_mean"] >= sc["dice_mean"] for _, f, sc in pairs)
        inside = [f["dice_mean"] <= sc["dice_mean"] + sc["dice_mean_ci"] for _, f, sc in pairs]
        out["meet"] = next((pairs[i][0] for i in range(len(pairs)) if all(inside[i:])), None)
    ssl = {n: by[("self-supervised/full", n)]["dice_mean"] - by[("scratch", n)]["dice_mean"]
           for n in ns if ("self-supervised/full", n) in by}
    out["ssl"] = {str(n): g for n, g in ssl.items()}
    small = [g for n, g in ssl.items() if n <= 2]
    out["ssl_helps"] = bool(small) and all(g > 0 for g in small) if small else None
    return out


def acceptance(rows: Sequence[Mapping[str, Any]], n: int, margin: float = 0.05
               ) -> dict[str, Any]:
    """The acceptance check at ``n`` labelled cases: the best fine-tuned arm's mean test Dice
    (across seeds) against scratch's, and the fraction of the step budget it needs to reach
    scratch's final Dice. ``passed``: Dice gain >= ``margin`` and fraction < 1."""
    summ = [s for s in summarise(rows) if s["n_labelled"] == n]
    by = {s["arm"]: s for s in summ}
    if "scratch" not in by:
        return {"n_labelled": n, "passed": None, "verdict": f"no scratch arm at n={n}"}
    ft = [s for s in summ if s["arm"].startswith(("source/", "self-supervised/"))]
    if not ft:
        return {"n_labelled": n, "passed": None, "verdict": f"no fine-tuned arm at n={n}"}
    best = max(ft, key=lambda s: s["dice_mean"])
    sc = by["scratch"]
    gain = best["dice_mean"] - sc["dice_mean"]
    frac = best["steps_to_target"] / best["steps"] if best["reached"] else math.nan
    passed = bool(gain >= margin and best["reached"] == best["seeds"] and frac < 1.0)
    verdict = (f"n={n} labelled target cases: best fine-tuned arm {best['arm']} reaches mean "
               f"test Dice {best['dice_mean']:.3f} +- {best['dice_mean_sd']:.3f} vs scratch "
               f"{sc['dice_mean']:.3f} +- {sc['dice_mean_sd']:.3f} (gain {gain:+.3f}); it "
               + (f"reaches scratch's final Dice after {best['steps_to_target']:.0f} of "
                  f"{best['steps']} steps ({frac:.0%}) in {best['reached']}/{best['seeds']} seeds"
                  if best["reached"] else "never reaches scratch's final Dice")
               + (". PASS" if passed else ". FAIL"))
    per_arm = {s["arm"]: {"dice_mean": s["dice_mean"], "gain": s["dice_mean"] - sc["dice_mean"],
                          "steps_to_target": s["steps_to_target"], "reached": s["reached"]}
               for s in ft}
    return {"n_labelled": n, "passed": passed, "margin": margin, "best_arm": best["arm"],
            "gain": gain, "step_fraction": frac, "verdict": verdict, "arms": per_arm}


# --------------------------------------------------------------------------- outputs

def write_results_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``results.csv`` (``CSV_COLUMNS``), written to a temporary name then renamed."""
    from glioseg.io_atomic import write_text

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


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def plot_dice_vs_labelled(path: Path, summary: Sequence[Mapping[str, Any]],
                          zero_shot: float | None) -> None:
    """Target test Dice (mean and WT/TC/ET) vs labelled cases, one line per arm (± sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [s for s in summary if not s["arm"].startswith("seq")]
    labels = sorted({s["arm"] for s in main}, key=lambda a: (a != "scratch", a))
    colors = _colors(labels)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), sharey=True)
    for ax, key in zip(axes, REGION_KEYS, strict=True):
        for lab in labels:
            pts = sorted((s for s in main if s["arm"] == lab), key=lambda s: s["n_labelled"])
            x = [s["n_labelled"] for s in pts]
            err = [s.get(f"{key}_ci", s[f"{key}_sd"]) for s in pts]
            err = [0.0 if math.isnan(e) else e for e in err]
            ax.errorbar(x, [s[key] for s in pts], yerr=err,
                        marker="o", capsize=3, label=lab, color=colors[lab],
                        lw=2.5 if lab == "scratch" else 1.5,
                        ls="--" if lab == "scratch" else "-")
        if zero_shot is not None and key == "dice_mean" and not math.isnan(zero_shot):
            ax.axhline(zero_shot, color="grey", ls=":", label="source model, no fine-tuning")
        ax.set_xscale("log", base=2)
        ns = sorted({s["n_labelled"] for s in main})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_title(key.replace("dice_", "Dice ").replace("mean", "mean (WT/TC/ET)"))
        ax.set_xlabel("labelled target cases")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("target test Dice (mean, 95% CI over seeds)")
    handles, names = [], []
    for ax in axes:  # one legend for every panel, outside them: no data hidden under it
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    budgets = ", ".join(f"n={s['n_labelled']}: {s['steps']}" for s in
                        sorted({s["n_labelled"]: s for s in main}.values(),
                               key=lambda s: s["n_labelled"]))
    fig.suptitle(f"Label efficiency: target test Dice after equal budgets per n (steps {budgets})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_time_to_target(path: Path, summary: Sequence[Mapping[str, Any]]) -> None:
    """Steps and seconds to reach scratch's final Dice, grouped by labelled cases; arms that
    never reach it in some seeds are annotated ``k/n``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [s for s in summary if not s["arm"].startswith("seq")]
    labels = sorted({s["arm"] for s in main}, key=lambda a: (a != "scratch", a))
    ns = sorted({s["n_labelled"] for s in main})
    colors = _colors(labels)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    seen: set[str] = set()
    for ax, key, unit in ((axes[0], "steps_to_target", "steps"),
                          (axes[1], "seconds_to_target", "seconds")):
        for i, n in enumerate(ns):
            # the arms run at this n, side by side and centred on the group's tick
            group = [next(s for s in main if s["arm"] == lab and s["n_labelled"] == n)
                     for lab in labels if any(s["arm"] == lab and s["n_labelled"] == n
                                              for s in main)]
            width = 0.8 / max(len(labels), 1)
            for j, s in enumerate(group):
                x = i + (j - (len(group) - 1) / 2) * width
                h = 0.0 if math.isnan(s[key]) else s[key]
                new = s["arm"] not in seen and ax is axes[0]
                seen.add(s["arm"])
                ax.bar(x, h, width, yerr=None if math.isnan(s[key]) else s[f"{key}_sd"],
                       color=colors[s["arm"]], label=s["arm"] if new else None, capsize=2)
                if s["reached"] < s["seeds"]:
                    ax.text(x, h, f"{s['reached']}/{s['seeds']}", ha="center", va="bottom",
                            fontsize=7, rotation=90)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("labelled target cases")
        ax.set_ylabel(f"{unit} to reach scratch's final Dice")
        ax.grid(alpha=0.3, axis="y")
    for i, n in enumerate(ns):  # each n's own budget
        steps_n = next(s["steps"] for s in main if s["n_labelled"] == n)
        axes[0].hlines(steps_n, i - 0.45, i + 0.45, color="grey", ls=":",
                       label="step budget" if i == 0 else None)
    handles, names = axes[0].get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: (names[k] == "step budget",
                                                     labels.index(names[k])
                                                     if names[k] in labels else 0))
    fig.legend([handles[k] for k in order], [names[k] for k in order], fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Time to reach the scratch arm's final Dice (mean ± sd over the seeds that "
                 "reached it; k/n: seeds that did; no bar: none did)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(path: Path, results: Sequence[Mapping[str, Any]], n: int,
                zero_shot: float | None = None) -> None:
    """Target test Dice vs step at ``n`` labelled cases, mean over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in results if r["n_labelled"] == n and not r["arm"].startswith("seq")]
    labels = sorted({arm_label(r) for r in sel}, key=lambda a: (a != "scratch", a))
    colors = _colors(labels)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for lab in labels:
        curves = [r["curve"] for r in sel if arm_label(r) == lab and r["curve"]]
        steps = sorted({c["step"] for cv in curves for c in cv})
        mean = [np.nanmean([c["dice_mean"] for cv in curves for c in cv if c["step"] == s])
                for s in steps]
        ax.plot(steps, mean, marker="o", color=colors[lab], label=lab,
                lw=2.5 if lab == "scratch" else 1.5, ls="--" if lab == "scratch" else "-")
    scratch = [r["dice_mean"] for r in sel if r["arm"] == "scratch"]
    if scratch:
        ax.axhline(float(np.mean(scratch)), color="grey", ls=":",
                   label="scratch final (target)")
    if zero_shot is not None and not math.isnan(zero_shot):
        ax.axhline(zero_shot, color="k", ls="-.", lw=1,
                   label="source model, no fine-tuning")
    ax.set_xlabel("step")
    ax.set_ylabel("target test Dice (mean of WT/TC/ET; mean over seeds)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(f"Learning curves with {n} labelled target cases")
    save_figure(fig, path)


def plot_sequence_sets(path: Path, rows: Sequence[Mapping[str, Any]], src: Sequence[str],
                       tgt: Sequence[str]) -> None:
    """Sequence-set scenario: test Dice per region, scratch vs fine-tuned, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = [r for r in rows if r["arm"].startswith("seq-")]
    ns = sorted({r["n_labelled"] for r in seq})
    arms = ["seq-scratch", "seq-source"]
    colors = {"seq-scratch": "tab:blue", "seq-source": "tab:orange"}
    names = {"seq-scratch": f"seq-scratch: scratch on {'+'.join(tgt).upper()}",
             "seq-source": f"seq-source: fine-tuned from the {'+'.join(src).upper()} model"}
    fig, axes = plt.subplots(1, len(ns), figsize=(6.5 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for j, arm in enumerate(arms):
            rs = [r for r in seq if r["arm"] == arm and r["n_labelled"] == n]
            for i, key in enumerate(REGION_KEYS):
                vals = [float(r[key]) for r in rs]
                x = i + (j - 0.5) * 0.38
                ax.bar(x, float(np.mean(vals)) if vals else 0.0, 0.36, color=colors[arm],
                       label=names[arm] if i == 0 else None, alpha=0.8)
                ax.scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(REGION_KEYS)), [k.replace("dice_", "") for k in REGION_KEYS])
        ax.set_ylim(0, 1)
        ax.set_ylabel("target test Dice")
        ax.set_title(f"{n} labelled target cases")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"Transfer across sequence sets: source {'+'.join(src).upper()} -> target "
                 f"{'+'.join(tgt).upper()} (bars: mean, dots: seeds)")
    save_figure(fig, path)


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


def write_outputs(out: Path, plan: StudyPlan, results: Sequence[Mapping[str, Any]],
                  pretrain: Mapping[str, Mapping[str, Any]], wall_s: float) -> dict[str, Any]:
    """results.csv, summary.md, the figures and study.json; returns the study.json document."""
    from glioseg.io_atomic import write_text

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
    zero = info.get("source", {}).get("dice_mean")
    figures = []
    plot_dice_vs_labelled(out / FIGURES[0], summ, zero)
    plot_time_to_target(out / FIGURES[1], summ)
    plot_curves(out / FIGURES[2], results, n_acc, zero)
    figures += list(FIGURES[:3])
    if any(r["arm"].startswith("seq-") for r in rows):
        plot_sequence_sets(out / FIGURES[3], rows, plan.seq_source_modalities,
                           plan.seq_target_modalities)
        figures.append(FIGURES[3])
    doc = {"kind": "label-efficiency", "verdict": accept["verdict"], "acceptance": accept,
           "checks": checks,
           "summary": summ, "pretraining": info, "figures": figures,
           "results": "results.csv", "table": "summary.md", "wall_s": round(wall_s, 1),
           "runs_wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in
                                    (*results, *pretrain.values())), 1),
           "plan": asdict(plan)}
    write_json(out / "study.json", _finite(doc), default=str)
    return doc


def _finite(obj: Any) -> Any:
    """NaN -> None, so study.json is strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


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

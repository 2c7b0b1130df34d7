"""The label-efficiency study's plan: its knobs (``StudyPlan``), step budgets, cohorts, the
labelled-case draws, and every training run as a ``RunSpec`` with typed config overrides.

Pure: nothing here trains or writes (``glioseg.study`` runs the specs). The rendered overrides
of a run (``Overrides.strings()``) are recorded in its ``result.json``, and a finished run made
with other overrides is refused, so their order and text are part of that file's format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from glioseg.errors import GliosegError
from glioseg.workflows.overrides import Overrides, section
from glioseg.workflows.runner import CohortSpec, cohort_specs

STRATEGIES: tuple[str, ...] = ("full", "frozen-encoder", "gradual", "discriminative")
"""Fine-tuning strategies of the ``source`` arm (``glioseg.transfer.freeze.STRATEGIES``)."""

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


def study_cohorts(plan: StudyPlan) -> dict[str, CohortSpec]:
    """cohort -> (site, seed, first index, count); the target cohorts are disjoint index
    ranges of one target stream, so no scan is in two of them."""
    return cohort_specs(plan.data_seed, plan.n_source,
                        [("target_pool", plan.n_pool), ("target_test", plan.n_test),
                         ("target_unlabelled", plan.n_unlabelled)])


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
    overrides: Overrides
    arm: str = ""
    strategy: str = "none"
    n_labelled: int = 0
    seed: int = 0
    modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
    cases: tuple[str, ...] = ()
    depends: tuple[str, ...] = field(default=())
    """Names of pretraining runs this run starts from."""


def pretrain_specs(out: Path, plan: StudyPlan, cohorts: Cohorts) -> list[RunSpec]:
    """The source model(s) and the self-supervised pretraining (run before the target runs)."""
    c = cohorts.caches
    p = plan.pretrain_patch
    common = section("data", patch_size=(p, p, p)) + section("train", seed=0)
    on_source = section("data", cache_dir=c["source"], val_cache=c["target_test"])
    specs = [RunSpec("pretrain", "source", on_source + section(
        "train", steps=plan.source_steps, val_every=max(plan.source_steps // 3, 1),
        ckpt_every=plan.source_steps) + common, arm="source-model")]
    if plan.seq_n_labelled:
        mods = plan.seq_source_modalities
        specs.append(RunSpec("pretrain", "source-" + "-".join(mods), on_source + section(
            "data", modalities=mods) + section(
            "train", steps=plan.seq_source_steps, val_every=max(plan.seq_source_steps // 2, 1),
            ckpt_every=plan.seq_source_steps) + common,
            arm="seq-source-model", modalities=mods))
    if plan.self_supervised:
        specs.append(RunSpec("pretrain", "genesis", section(
            "data", cache_dir=c["target_unlabelled"]) + section(
            "train", task="genesis", steps=plan.pretrain_steps,
            ckpt_every=plan.pretrain_steps) + common, arm="genesis-model"))
    return [replace(s, overrides=s.overrides.with_extra(plan.overrides)) for s in specs]


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
    ov = (section("data", cache_dir=c["target_pool"], val_cache=c["target_test"], cases=ids,
                  patch_size=(p, p, p))
          + section("train", steps=steps, val_every=val_interval(plan, steps), ckpt_every=steps,
                    log_every=min(10, steps), seed=seed)
          + section("optim", warmup_steps=plan.warmup_steps))
    lr = run_lr(plan, arm)
    if lr > 0:
        ov += section("optim", lr=lr)
    if modalities:
        ov += section("data", modalities=modalities)
    depends: tuple[str, ...] = ()
    if init:
        ov += section("transfer", init_from=init, strategy=strategy)
        depends = (Path(init).parent.name,)
    mods = tuple(modalities) or ("t1", "t1ce", "t2", "flair")
    return RunSpec("target", f"{arm}-{strategy}-n{n}-s{seed}", ov.with_extra(plan.overrides),
                   arm=arm,
                   strategy=strategy, n_labelled=n, seed=seed, modalities=mods,
                   cases=tuple(ids), depends=depends)


def run_lr(plan: StudyPlan, arm: str) -> float:
    """Peak learning rate of ``arm``'s target runs (0: the preset's)."""
    if arm in FINETUNED_ARMS and plan.finetune_lr > 0:
        return plan.finetune_lr
    return plan.lr

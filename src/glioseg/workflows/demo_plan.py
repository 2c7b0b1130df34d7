"""The demo's plan: every knob of ``glioseg demo`` (``DemoPlan``, three presets), the line
it prints, its synthetic cohorts and the typed config overrides of its three training runs.

``glioseg.demo`` runs the plan; a demo folder records it (``.stages/plan.json``) and refuses
another, so the fields of ``DemoPlan`` are part of that file's format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from glioseg.errors import GliosegError
from glioseg.workflows.overrides import Overrides, section
from glioseg.workflows.runner import CohortSpec, cohort_specs


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

def demo_cohorts(plan: DemoPlan) -> dict[str, CohortSpec]:
    """cohort -> (site profile, seed, first case index, number of cases). The two target
    cohorts are disjoint index ranges of one target-site stream: no scan is in both."""
    return cohort_specs(plan.data_seed, plan.n_source,
                        [("target_train", plan.n_target_train),
                         ("target_test", plan.n_target_test)])


def source_overrides(plan: DemoPlan, caches: Mapping[str, Path]) -> Overrides:
    """Config overrides of the source model's run."""
    p = plan.patch
    return (section("data", cache_dir=caches["source"], n_val=plan.n_val, patch_size=(p, p, p))
            + section("train", steps=plan.source_steps, val_every=plan.source_val_every,
                      ckpt_every=plan.source_val_every, seed=0)).with_extra(plan.overrides)


def target_overrides(plan: DemoPlan, caches: Mapping[str, Path],
                     init_from: Path | None) -> Overrides:
    """Config overrides of a target arm: the labelled target cases, validated on the target
    test cache; ``init_from`` (a model folder) makes it the transfer arm, None the scratch arm.
    Both arms get the same steps, schedule, patch and seed."""
    p = plan.patch
    ov = (section("data", cache_dir=caches["target_train"], val_cache=caches["target_test"],
                  patch_size=(p, p, p))
          + section("train", steps=plan.target_steps, val_every=plan.target_val_every,
                    ckpt_every=plan.target_val_every, log_every=min(10, plan.target_steps))
          + section("optim", warmup_steps=plan.target_warmup) + section("train", seed=0))
    if init_from is not None:
        ov += section("transfer", init_from=init_from, strategy=plan.strategy)
    return ov.with_extra(plan.overrides)

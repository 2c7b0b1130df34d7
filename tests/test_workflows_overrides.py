"""Typed config overrides (``glioseg.workflows.overrides``): a misspelt or renamed field fails
when the overrides are built; the config they build equals the one ``load_config`` builds from
their ``key=value`` text, for every run of the demo and the study."""

from __future__ import annotations

from pathlib import Path

import pytest

from glioseg.train import config as C
from glioseg.workflows import demo_plan as DP
from glioseg.workflows import study_plan as SP
from glioseg.workflows.overrides import Overrides, apply, build_config, section


def test_a_misspelt_field_fails_when_the_overrides_are_built() -> None:
    with pytest.raises(C.ConfigError, match=r"data.cache_dirr: DataConfig has no field"):
        section("data", cache_dirr="/data")
    with pytest.raises(C.ConfigError, match="no such config section"):
        section("trian", steps=10)
    with pytest.raises(C.ConfigError, match="train.step"):
        section("train", seed=0, step=10)  # the right section, a wrong field


def test_text_rendering_order_and_last_value_wins() -> None:
    ov = (section("data", cache_dir=Path("/c/pool"), cases=["a", "b"], patch_size=(48, 48, 48))
          + section("optim", lr=1e-4) + section("train", steps=10)
          + section("train", steps=20)).with_extra(["train.seed=3"])
    assert ov.strings() == ["data.cache_dir=/c/pool", "data.cases=[a,b]",
                            "data.patch_size=[48,48,48]", "optim.lr=0.0001", "train.steps=10",
                            "train.steps=20", "train.seed=3"]
    assert ov.get("train.steps") == 20 and ov.get("train.seed") is None
    cfg = build_config("small", ov)
    assert cfg.train.steps == 20 and cfg.train.seed == 3 and cfg.data.cases == ("a", "b")
    assert cfg.model.patch_size == (48, 48, 48)  # derived by Config as for a loaded file
    assert cfg == C.load_config("small", ov.strings())


def test_extras_apply_after_the_typed_fields() -> None:
    cfg = apply(C.load_config("small"), section("train", steps=10).with_extra(["train.steps=7"]))
    assert cfg.train.steps == 7
    with pytest.raises(C.ConfigError):
        apply(C.load_config("small"), Overrides(extra=("train.nope=1",)))


def _demo_runs() -> list[tuple[str, Overrides]]:
    caches = {c: Path(f"/data/{c}") for c in ("source", "target_train", "target_test")}
    runs = []
    for plan in (DP.plan_for(), DP.plan_for(quick=True), DP.plan_for(full=True)):
        runs += [(plan.config, DP.source_overrides(plan, caches)),
                 (plan.config, DP.target_overrides(plan, caches, None)),
                 (plan.config, DP.target_overrides(plan, caches, Path("/runs/source/best")))]
    return runs


def _study_runs(tmp_path: Path) -> list[tuple[str, Overrides]]:
    plan = SP.StudyPlan(seeds=(0, 1), n_labelled=(1, 2), seq_n_labelled=(2,),
                        strategies=SP.STRATEGIES, overrides=("loss.batch_dice=true",))
    pool = tuple(f"BraTS-SSA-{i:05d}-000" for i in range(10))
    cohorts = SP.Cohorts({c: tmp_path / "data" / "cache" / c for c in SP.COHORTS}, pool)
    specs = SP.pretrain_specs(tmp_path, plan, cohorts) + SP.target_specs(tmp_path, plan, cohorts)
    return [(plan.config, s.overrides) for s in specs]


def test_every_run_config_equals_the_one_built_from_its_text(tmp_path: Path) -> None:
    runs = _demo_runs() + _study_runs(tmp_path)
    assert len(runs) > 20
    for preset, ov in runs:
        assert build_config(preset, ov) == C.load_config(preset, ov.strings()), ov.strings()
    genesis = next(ov for _, ov in runs if ov.get("train.task") == "genesis")
    assert build_config("small", genesis).model.deep_supervision is False
    seq = next(ov for _, ov in runs if ov.get("data.modalities") == ("t2", "t1"))
    assert build_config("small", seq).model.in_channels == 2

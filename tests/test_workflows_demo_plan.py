"""The demo's plan (``glioseg.workflows.demo_plan``): the presets, the printed plan, the
cohorts and the configs its typed overrides build."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from glioseg.cli import app
from glioseg.demo import COHORTS
from glioseg.train import config as C
from glioseg.workflows import demo_plan as DP
from glioseg.workflows.overrides import build_config


def test_full_plan_is_wired_and_printed() -> None:
    res = CliRunner().invoke(app, ["demo", "--full", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "1 mm" in res.output and "'full'" in res.output and "128^3" in res.output
    full = DP.plan_for(full=True)
    cfg = build_config(full.config, DP.source_overrides(full, _caches()))
    assert cfg.patch_size == (128, 128, 128) and cfg.optim.name == "sgd"
    assert cfg.train.steps == full.source_steps and cfg.data.n_val == full.n_val
    with pytest.raises(DP.DemoError, match="exclude"):
        DP.plan_for(quick=True, full=True)


def _caches() -> dict[str, Path]:
    return {c: Path(f"/data/{c}") for c in COHORTS}


@pytest.mark.parametrize("plan", [DP.plan_for(), DP.plan_for(quick=True), DP.plan_for(full=True)])
def test_scratch_and_transfer_arms_differ_only_in_their_start(plan: DP.DemoPlan) -> None:
    init = Path("/runs/source/best")
    scratch = C.config_to_dict(build_config(plan.config, DP.target_overrides(plan, _caches(),
                                                                             None)))
    transfer = C.config_to_dict(build_config(plan.config, DP.target_overrides(plan, _caches(),
                                                                              init)))
    assert transfer.pop("transfer") == {**scratch.pop("transfer"), "init_from": str(init),
                                        "strategy": plan.strategy}
    assert scratch == transfer
    assert scratch["train"]["steps"] == plan.target_steps
    assert scratch["data"]["cache_dir"] == "/data/target_train"
    assert scratch["data"]["val_cache"] == "/data/target_test"


def test_target_cohorts_are_disjoint_ranges_of_one_site() -> None:
    specs = DP.demo_cohorts(DP.plan_for())
    site_a, seed_a, start_a, n_a = specs["target_train"]
    site_b, seed_b, start_b, n_b = specs["target_test"]
    assert site_a == site_b == "target" and seed_a == seed_b
    assert set(range(start_a, start_a + n_a)).isdisjoint(range(start_b, start_b + n_b))
    assert specs["source"][0] == "source"

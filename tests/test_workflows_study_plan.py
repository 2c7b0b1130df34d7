"""The study's plan (``glioseg.workflows.study_plan``): case draws, plan validation, budgets,
and the run specs with their typed overrides (read back as ``key=value`` text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glioseg.workflows import study_plan as SP

POOL = tuple(f"BraTS-SSA-{i:05d}-000" for i in range(10))


def test_labelled_cases_nested_sorted_and_deterministic() -> None:
    for seed in (0, 1, 2):
        draws = [SP.labelled_cases(POOL, n, seed, 2026) for n in (1, 2, 4, 8, 10)]
        for small, big in zip(draws, draws[1:], strict=False):
            assert set(small) < set(big), "a larger labelled set must contain the smaller one"
        for n, d in zip((1, 2, 4, 8, 10), draws, strict=True):
            assert len(d) == n == len(set(d))
            assert d == sorted(d), "cases come in pool order"
            assert set(d) <= set(POOL)
        assert draws == [SP.labelled_cases(POOL, n, seed, 2026) for n in (1, 2, 4, 8, 10)]
    # different seeds draw different sets (for 3 seeds and 4 of 10 cases a collision of all
    # three would be a broken seed, not chance)
    fours = {tuple(SP.labelled_cases(POOL, 4, s, 2026)) for s in (0, 1, 2)}
    assert len(fours) > 1


def test_labelled_cases_more_than_the_pool_is_an_error() -> None:
    with pytest.raises(SP.StudyError, match="pool has 10"):
        SP.labelled_cases(POOL, 11, 0, 2026)


def test_plan_validation() -> None:
    with pytest.raises(SP.StudyError, match="unknown strategy"):
        SP.StudyPlan(strategies=("full", "frozen"))
    with pytest.raises(SP.StudyError, match="n_pool=3"):
        SP.StudyPlan(n_labelled=(1, 4), n_pool=3)
    with pytest.raises(SP.StudyError, match=">= 1"):
        SP.StudyPlan(n_labelled=(0, 2))
    with pytest.raises(ValueError):
        SP.StudyPlan(seeds=())


def _cohorts(tmp: Path) -> SP.Cohorts:
    return SP.Cohorts({c: tmp / "data" / "cache" / c for c in SP.COHORTS}, POOL)


def _ov(spec: SP.RunSpec, key: str) -> str | None:
    vals = [o.split("=", 1)[1] for o in spec.overrides.strings() if o.startswith(key + "=")]
    return vals[-1] if vals else None


def test_target_specs_equal_budgets_and_arms(tmp_path: Path) -> None:
    plan = SP.StudyPlan(seeds=(0, 1), n_labelled=(1, 2), steps=40, seq_n_labelled=(2,),
                       strategies=SP.STRATEGIES, self_supervised_at=None)
    specs = SP.target_specs(tmp_path, plan, _cohorts(tmp_path))
    # n=2 (strategies_at): scratch, 4 strategies, self-supervised; n=1: scratch, source/full,
    # self-supervised; then seq-scratch and seq-source at n=2; each x 2 seeds
    assert len(specs) == (6 + 3 + 2) * 2
    assert sorted(s.strategy for s in specs if s.arm == "source" and s.n_labelled == 1) \
        == ["full", "full"]
    assert len({s.strategy for s in specs if s.arm == "source" and s.n_labelled == 2}) == 4
    assert len({s.name for s in specs}) == len(specs)
    assert {_ov(s, "train.steps") for s in specs} == {"40"}
    for s in specs:
        ids = SP.labelled_cases(POOL, s.n_labelled, s.seed, plan.data_seed)
        assert _ov(s, "data.cases") == "[" + ",".join(ids) + "]"
        assert _ov(s, "train.seed") == str(s.seed)
        assert _ov(s, "data.val_cache") == str(tmp_path / "data" / "cache" / "target_test")
        init = _ov(s, "transfer.init_from")
        # fine-tuning from a supervised model at finetune_lr, the others at the preset's lr
        assert _ov(s, "optim.lr") == ("0.0001" if s.arm == "source" else None)
        if s.arm in ("scratch", "seq-scratch"):
            assert init is None and s.depends == ()
        else:
            assert init is not None and Path(init).name == "last"
            assert s.depends == (Path(init).parent.name,)
            assert _ov(s, "transfer.strategy") == s.strategy
        if s.arm.startswith("seq-"):
            assert _ov(s, "data.modalities") == "[t2,t1]"
    seq_src = [s for s in specs if s.arm == "seq-source"]
    assert {s.depends for s in seq_src} == {("source-flair-t1ce",)}


def test_every_strategy_at_every_n(tmp_path: Path) -> None:
    plan = SP.StudyPlan(seeds=(0,), n_labelled=(1, 4), strategies=("gradual", "full"),
                       strategies_at=None, self_supervised=False, seq_n_labelled=(), lr=0.002)
    specs = SP.target_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [(s.arm, s.strategy, s.n_labelled) for s in specs] == [
        ("scratch", "none", 1), ("source", "gradual", 1), ("source", "full", 1),
        ("scratch", "none", 4), ("source", "gradual", 4), ("source", "full", 4)]
    assert [_ov(s, "optim.lr") for s in specs[:2]] == ["0.002", "0.0001"]


def test_pretrain_specs(tmp_path: Path) -> None:
    plan = SP.StudyPlan(self_supervised=False, seq_n_labelled=())
    specs = SP.pretrain_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [s.name for s in specs] == ["source"]
    plan = SP.StudyPlan(seq_n_labelled=(2,))
    specs = SP.pretrain_specs(tmp_path, plan, _cohorts(tmp_path))
    assert [s.name for s in specs] == ["source", "source-flair-t1ce", "genesis"]
    assert _ov(specs[1], "data.modalities") == "[flair,t1ce]"
    assert _ov(specs[2], "train.task") == "genesis"
    assert "target_unlabelled" in str(_ov(specs[2], "data.cache_dir"))


def test_budget_grows_with_the_labelled_cases(tmp_path: Path) -> None:
    plan = SP.StudyPlan(seeds=(0,), n_labelled=(1, 2, 4, 8), n_pool=10)
    assert [SP.budget(plan, n) for n in (1, 2, 4, 8)] == [100, 100, 200, 250]
    specs = SP.target_specs(tmp_path, plan, _cohorts(tmp_path))
    for s in specs:  # every arm at one n gets the same budget, validated 4 times
        steps = SP.budget(plan, s.n_labelled)
        assert _ov(s, "train.steps") == str(steps)
        assert _ov(s, "train.val_every") == str(steps // 4)
    # the self-supervised arm runs where its question is asked (n <= 2)
    assert sorted({s.n_labelled for s in specs if s.arm == "self-supervised"}) == [1, 2]
    assert SP.budget(SP.StudyPlan(steps=40), 8) == 40  # a fixed budget when asked

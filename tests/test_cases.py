"""train/cases.py: which cases a run trains and validates on (``data.cases``, a seeded
hold-out or a separate validation cache, every case for pretraining), seen through
``data.modalities``; the patch stream, reseeded from the step on resume."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_fit import TINY, _tiny_cache

from glioseg.preprocess.cache import open_cache
from glioseg.train import config as C
from glioseg.train.cases import (
    UNLABELLED_HINT,
    CaseView,
    channel_indices,
    forever,
    loader_seed,
    select_cases,
    split_cases,
)
from glioseg.train.errors import TrainError


def _cfg(cache: Path, *extra: str) -> C.Config:
    return C.load_config("small", [*TINY, f"data.cache_dir={cache}", *extra])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_cache(tmp_path_factory.mktemp("cases_cache"), n=3)


def test_chosen_cases_and_a_separate_validation_cache(cache: Path, tmp_path: Path):
    other = _tiny_cache(tmp_path / "val", n=2)
    cfg = _cfg(cache, "data.cases=[CASE_000]", f"data.val_cache={other}")
    train, val = select_cases(cfg, open_cache(cache), open_cache(other))
    assert [c.case_id for c in train] == ["CASE_000"]
    assert sorted(c.case_id for c in val) == ["CASE_000", "CASE_001"]
    bad = _cfg(cache, "data.cases=[CASE_000,NOPE_7]")
    with pytest.raises(TrainError, match="NOPE_7"):
        select_cases(bad, open_cache(cache))


def test_blank_labels_leave_a_labelled_case_alone(cache: Path):
    case = open_cache(cache)[0]
    view = CaseView(case, blank_labels=True)
    assert not view.blank_labels and view.meta is case.meta
    assert np.array_equal(view.labels, case.labels) and view.labels.any()


def test_a_view_keeps_the_chosen_channels_in_their_order(cache: Path):
    case = open_cache(cache)[0]
    assert channel_indices(["flair", "t1"]) == [3, 0]
    view = CaseView(case, channel_indices(["flair", "t1"]))
    np.testing.assert_array_equal(view.image, np.asarray(case.image)[[3, 0]])
    assert view.shape == case.shape and view.case_id == case.case_id
    assert view.locations.keys() == case.locations.keys()
    assert repr(view) == f"CaseView({case.case_id!r}, channels=[3, 0])"


def test_the_hold_out_is_seeded_and_keeps_a_training_case(cache: Path):
    cases = open_cache(cache)
    train, val = split_cases(cases, 1, seed=0)
    assert len(train) == 2 and len(val) == 1
    assert split_cases(cases, 1, seed=0) == (train, val)  # same seed, same split
    train, val = split_cases(cases, 10, seed=0)
    assert len(train) == 1 and len(val) == 2  # at least one case to train on
    assert split_cases(cases, 0, seed=0)[1] == []


def test_no_labelled_case_is_refused_with_the_way_out():
    unlabelled = [SimpleNamespace(case_id="A", meta={"has_labels": False})]
    with pytest.raises(TrainError) as err:
        split_cases(unlabelled, 1, seed=0)
    assert "no case with labels" in str(err.value) and UNLABELLED_HINT in str(err.value)


def test_validation_views_and_pretraining_on_every_case(cache: Path):
    cases = open_cache(cache)
    train, val = select_cases(_cfg(cache, "data.n_val=1", "data.modalities=[t2,flair]"), cases)
    assert len(train) == 2 and len(val) == 1
    assert val[0].channels == [2, 3] and not isinstance(train[0], CaseView)
    train, val = select_cases(_cfg(cache, "train.task=genesis"), cases)
    assert val == [] and [v.case_id for v in train] == [c.case_id for c in cases]
    assert all(isinstance(v, CaseView) for v in train)


def test_loader_seed_is_fresh_and_reproducible_after_a_resume():
    assert loader_seed(7, 0) == 7  # a fresh run: the config's seed
    assert loader_seed(7, 100) == loader_seed(7, 100)
    assert len({loader_seed(7, 100), loader_seed(7, 200), loader_seed(8, 100), 7}) == 4


def test_forever_goes_round_the_epochs_and_refuses_an_empty_loader():
    items = forever([1, 2])
    assert [next(items) for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(TrainError, match="no batch"):
        next(forever([]))

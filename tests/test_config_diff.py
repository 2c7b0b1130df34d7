"""train/config_diff.py: what may change when a run resumes (reported) and what may not
(refused)."""

from glioseg.train import config as C
from glioseg.train.config_diff import RESUME_MUTABLE, config_differences, resume_changes


def _dicts(*sets: str) -> tuple[dict, dict]:
    return C.config_to_dict(C.load_config("small")), C.config_to_dict(C.load_config("small",
                                                                                   list(sets)))


def test_same_config_differs_nowhere():
    saved, current = _dicts()
    assert resume_changes(saved, current) == {} and config_differences(saved, current) == []


def test_mutable_keys_are_reported_not_refused():
    saved, current = _dicts("optim.lr=0.5", "train.steps=7")
    assert resume_changes(saved, current) == {
        "optim.lr": [saved["optim"]["lr"], 0.5], "train.steps": [saved["train"]["steps"], 7]}
    assert config_differences(saved, current) == []
    assert {"optim.lr", "train.steps", "train.amp", "data.cache_dir"} <= RESUME_MUTABLE


def test_other_keys_are_refused_with_both_values():
    saved, current = _dicts("train.seed=5", "optim.lr=0.5")
    assert config_differences(saved, current) == [f"train.seed: {saved['train']['seed']!r} != 5"]
    assert list(resume_changes(saved, current)) == ["optim.lr"]


def test_a_key_absent_on_one_side_is_a_difference():
    saved, current = _dicts()
    del saved["model"]["base_width"]
    assert config_differences(saved, current) == [
        f"model.base_width: '<absent>' != {current['model']['base_width']!r}"]
    del current["train"]["steps"]
    assert resume_changes(saved, current) == {"train.steps": [saved["train"]["steps"], None]}

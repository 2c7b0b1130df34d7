"""train/run_card.py: the model card of a training checkpoint, with the grid (spacing,
orientation) the model learnt on and where its weights came from."""

from pathlib import Path

from test_fit import TINY, _cache_with_spacings, _tiny_cache

from glioseg.model.registry import ModelConfig, build_model
from glioseg.train import config as C
from glioseg.train.run_card import cache_spacing, model_card


def test_card_spacing_is_the_grid_the_model_learnt_on(tmp_path: Path):
    # data already at 2 mm, not resampled: the card must still say 2 mm, or prediction on
    # 1 mm data would feed the model images at half its scale
    same = _cache_with_spacings(tmp_path / "a", [[2.0, 2.0, 2.0]] * 2)
    assert cache_spacing(str(same)) == [2.0, 2.0, 2.0]
    mixed = _cache_with_spacings(tmp_path / "b", [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    assert cache_spacing(str(mixed)) is None
    resampled = _cache_with_spacings(tmp_path / "c", [[1.5] * 3] * 2, resampled=[1.5] * 3)
    assert cache_spacing(str(resampled)) == [1.5, 1.5, 1.5]
    assert cache_spacing(str(tmp_path / "no-cache")) is None


def test_a_training_run_card_carries_the_cache_orientation(tmp_path):
    """The checkpoint cards are built with the cache's orientation."""
    from datafiles import tiny_brats2021_case

    from glioseg.preprocess.run import preprocess_dir

    for i in range(2):
        tiny_brats2021_case(tmp_path / "data", f"BraTS2021_0000{i}", seed=i)
    preprocess_dir(tmp_path / "data", tmp_path / "cache")
    cfg = C.config_from_dict({"data": {"cache_dir": str(tmp_path / "cache")}})
    tiny = ModelConfig(base_width=4, n_stages=3, max_width=16, patch_size=(16, 16, 16))
    card = model_card(cfg, build_model(tiny), 5, {}, [])
    assert card.preprocessing["orientation"] == ["R", "A", "S"]


def _cfg(cache: Path, *extra: str) -> C.Config:
    return C.load_config("small", [*TINY, f"data.cache_dir={cache}", *extra])


def test_card_scores_scheme_and_provenance(tmp_path: Path):
    from glioseg.preprocess.cache import open_cache

    cache = _tiny_cache(tmp_path / "cache", n=1)
    cases = open_cache(cache)
    cfg = _cfg(cache)
    net = build_model(cfg.model)
    card = model_card(cfg, net, 7, {"step": 6, "dice_WT": 0.5, "dice_ET": 0.25}, cases)
    assert card.metrics == {"dice": {"WT": 0.5, "ET": 0.25}, "step": 6}
    assert card.label_scheme == "brats2023" and card.provenance == {"source": "trained"}
    assert card.training["steps"] == 7 and card.training["data"] == str(cache)
    assert model_card(cfg, net, 7, {}, cases).metrics == {}  # no validation, no scores
    tuned = model_card(_cfg(cache, f"transfer.init_from={tmp_path / 'm'}"), net, 1, {}, cases)
    assert tuned.provenance["source"] == "fine-tuned"
    assert tuned.provenance["init_from"] == str(tmp_path / "m")
    genesis = _cfg(cache, "train.task=genesis")
    pre = model_card(genesis, build_model(genesis.model), 1, {}, cases)
    assert pre.provenance["source"] == "self-supervised"
    assert pre.regions == ("restore_t1", "restore_t1ce", "restore_t2", "restore_flair")


def test_card_names_the_validation_cases(tmp_path: Path):
    from glioseg.model.card import ModelCard
    from glioseg.preprocess.cache import open_cache

    cache = _tiny_cache(tmp_path / "cache", n=1)
    cfg = _cfg(cache)
    net = build_model(cfg.model)
    card = model_card(cfg, net, 3, {}, open_cache(cache), val_ids=["CASE_007", "CASE_002"])
    assert card.training["validation_cases"] == ["CASE_007", "CASE_002"]
    assert ModelCard.from_json(card.to_json()).training["validation_cases"] == [
        "CASE_007", "CASE_002"]
    assert "validation_cases" not in model_card(cfg, net, 3, {}, []).training  # as before


def test_card_scheme_is_the_declared_one(tmp_path: Path):
    """A cache preprocessed with ``--labels brats2023`` from BraTS 2021-named cases: the card
    says the segmentations were read as brats2023 (its meta's ``label_scheme``), not the
    layout's brats2021; without a declaration the layout's."""
    from types import SimpleNamespace

    cfg = _cfg(_tiny_cache(tmp_path / "cache", n=1))
    net = build_model(cfg.model)
    declared = SimpleNamespace(meta={"layout": "brats2021", "label_scheme": "brats2023"})
    plain = SimpleNamespace(meta={"layout": "brats2021", "label_scheme": None})
    assert model_card(cfg, net, 1, {}, [declared]).label_scheme == "brats2023"
    assert model_card(cfg, net, 1, {}, [plain]).label_scheme == "brats2021"

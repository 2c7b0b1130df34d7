"""The config schema built directly (no YAML): patch size and channels kept consistent, value
checks naming the key, frozen sections, and the loader's classes being these."""

import dataclasses

import pytest

from glioseg.train import config as C
from glioseg.train import config_schema as S


def test_loader_reexports_the_schema_classes():
    assert C.Config is S.Config and C.ConfigError is S.ConfigError
    assert type(C.load_config().train) is S.TrainConfig


def test_patch_size_and_channels_follow_the_data_section():
    cfg = S.Config(data=S.DataConfig(patch_size=(32, 32, 40), modalities=("t1ce", "flair")))
    assert cfg.patch_size == (32, 32, 40) and cfg.model.patch_size == (32, 32, 40)
    assert cfg.model.in_channels == 2
    genesis = S.Config(data=S.DataConfig(modalities=("t2",)), train=S.TrainConfig(task="genesis"))
    assert genesis.model.out_channels == 1 and genesis.model.deep_supervision is False
    assert S.Config().patch_size == tuple(S.Config().model.patch_size)  # unset: the model's


@pytest.mark.parametrize("build, key", [
    (lambda: S.Config(data=S.DataConfig(batch_size=0)), "data.batch_size"),
    (lambda: S.Config(data=S.DataConfig(modalities=("t1", "t1"))), "data.modalities"),
    (lambda: S.Config(data=S.DataConfig(modalities=("dwi",))), "data.modalities"),
    (lambda: S.Config(optim=S.OptimConfig(lr=0.0)), "optim.lr"),
    (lambda: S.Config(train=S.TrainConfig(val_overlap=1.0)), "train.val_overlap"),
    (lambda: S.Config(loss=S.LossConfig(dice_weight=0.0, bce_weight=0.0)), "loss.dice_weight"),
])
def test_a_bad_value_names_its_key(build, key):
    with pytest.raises(S.ConfigError, match=key.replace(".", r"\.")):
        build()


def test_sections_are_frozen():
    cfg = S.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]

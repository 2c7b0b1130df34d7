"""Training config: defaults, YAML, overrides with type conversion, errors naming the key."""

from pathlib import Path

import pytest
import yaml

from glioseg.train import config as C


def test_defaults_and_presets_load():
    cfg = C.load_config()
    assert cfg.train.amp == "auto" and cfg.optim.name == "adamw"
    # data.patch_size unset: taken from the model config
    assert cfg.patch_size == tuple(cfg.model.patch_size)
    small = C.load_config("small")
    assert small.patch_size == (48, 48, 48)
    assert small.model.patch_size == (48, 48, 48)  # kept equal to the data patch
    assert small.model.base_width == 16 and small.model.n_stages == 4
    full = C.load_config("full")
    assert full.patch_size == (128, 128, 128) and full.optim.name == "sgd"


def test_overrides_convert_to_the_declared_types():
    cfg = C.load_config("small", [
        "train.steps=200",          # int
        "optim.lr=1e-4",            # YAML 1.1 reads 1e-4 as a string: converted to float
        "optim.weight_decay=0",     # int -> float
        "data.patch_size=[32, 32, 64]",  # list -> tuple
        "train.compile=true",
        "train.amp=none",
        "data.augment=off",
        "model.base_width=8",
    ])
    assert cfg.train.steps == 200 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.0 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.patch_size == (32, 32, 64) and cfg.model.patch_size == (32, 32, 64)
    assert cfg.train.compile is True and cfg.train.amp == "none" and cfg.data.augment is False
    assert cfg.model.base_width == 8
    # later overrides win
    assert C.load_config(None, ["train.seed=1", "train.seed=5"]).train.seed == 5


@pytest.mark.parametrize("override, key", [
    ("train.stepz=3", "train.stepz"),
    ("trian.steps=3", "trian"),
    ("train.steps=ten", "train.steps"),
    ("train.steps=2.5", "train.steps"),
    ("train.amp=fp8", "train.amp"),
    ("train.compile=maybe", "train.compile"),
    ("data.patch_size=[32, 32]", "data.patch_size"),
    ("data.patch_size=64", "data.patch_size"),
    ("model.depth=3", "model.depth"),
    ("train.steps=0", "train.steps"),
    ("data.foreground_fraction=1.5", "data.foreground_fraction"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        C.load_config(None, [override])


def test_override_syntax_error():
    with pytest.raises(C.ConfigError, match="key=value"):
        C.load_config(None, ["train.steps"])
    with pytest.raises(C.ConfigError, match="preset"):
        C.load_config("no-such-preset")


def test_yaml_file_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(C.ConfigError, match=r"bad\.yaml.*train\.stepz"):
        C.load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(C.ConfigError, match="list.yaml"):
        C.load_config(notmap)


def test_dump_then_load_round_trips(tmp_path: Path):
    cfg = C.load_config("small", ["optim.lr=2.5e-4", "train.grad_accum=3", "data.n_val=1"])
    path = tmp_path / "cfg.yaml"
    text = C.dump_config(cfg, path)
    assert path.read_text() == text
    raw = yaml.safe_load(text)  # values only: plain mappings, lists and scalars
    assert raw["optim"]["lr"] == 2.5e-4 and raw["data"]["patch_size"] == [48, 48, 48]
    assert C.load_config(path) == cfg
    assert C.config_from_dict(C.config_to_dict(cfg)) == cfg


def test_dump_config_takes_a_temporary_name_of_its_own(tmp_path: Path):
    """Two writers of one file (every node of a launch writing OUT/launch.yaml) must not share
    a temporary file: another writer's temporary is left alone (a fixed ``.NAME.tmp`` was
    overwritten and renamed away under it), and nothing of ours is left behind."""
    cfg = C.load_config("small", ["optim.lr=2.5e-4"])
    theirs = tmp_path / ".launch.yaml.tmp"
    theirs.write_text("half of another writer's file")
    C.dump_config(cfg, tmp_path / "launch.yaml")
    assert theirs.read_text() == "half of another writer's file"
    assert C.load_config(tmp_path / "launch.yaml") == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == [".launch.yaml.tmp", "launch.yaml"]


@pytest.mark.parametrize("override, problem", [
    ("train.stepz=20", "unknown key train.stepz"),
    ("train.steps=abc", "train.steps: expected an integer"),
    ("optim.name=adam", "optim.name: 'adam' is not one of"),
    ("data.batch_size=0", "data.batch_size: must be >= 1"),
])
def test_an_override_error_names_the_override_not_the_preset(override, problem):
    with pytest.raises(C.ConfigError) as err:
        C.load_config("small", ["train.steps=5", override, "train.seed=2"],
                      overrides_from="--set")
    assert str(err.value).startswith(f"--set {override}: {problem}"), str(err.value)
    assert "small.yaml" not in str(err.value)


def test_a_file_error_still_names_the_file_whatever_the_overrides(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: many\n")
    with pytest.raises(C.ConfigError, match=r"^\S*bad\.yaml: train\.steps: expected an integer"):
        C.load_config(bad, ["train.seed=2"], overrides_from="--set")
    # an override that mends the file is taken, as before
    assert C.load_config(bad, ["train.steps=3"]).train.steps == 3

"""Model cards: JSON round trip, save/load equality, wrappers, clear errors."""

import json

import pytest
import torch

from glioseg.model.card import (
    CardError,
    ModelCard,
    load_card,
    load_model,
    save_model,
)
from glioseg.model.registry import ModelConfig, build_model
from glioseg.model.state_dict import WeightsMismatchError

torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    base = dict(base_width=4, n_stages=3, max_width=16, patch_size=(16, 16, 16))
    base.update(kw)
    return ModelConfig(**base)


def make_card(model, **kw) -> ModelCard:
    return ModelCard.for_model(
        model,
        label_scheme="brats2021",
        preprocessing={"spacing": [2.0, 2.0, 2.0], "normalisation": "zscore-brain"},
        training={"steps": 10, "data": "synthetic", "seed": 3},
        metrics={"dice": {"WT": 0.8, "TC": 0.7, "ET": 0.6}},
        et_threshold=50,
        provenance={"source": "trained"},
        **kw,
    )


def test_card_json_round_trip_keeps_every_field_and_unknown_keys():
    card = make_card(tiny())
    back = ModelCard.from_json(card.to_json())
    assert back == card
    assert back.modalities == ("t1", "t1ce", "t2", "flair") and back.et_threshold == 50
    assert back.config == tiny()
    data = json.loads(card.to_json())
    data["from_the_future"] = {"x": 1}
    again = ModelCard.from_dict(data)
    assert again.extra == {"from_the_future": {"x": 1}}
    assert json.loads(again.to_json())["from_the_future"] == {"x": 1}


def test_card_checks_modalities_against_channels():
    data = json.loads(make_card(tiny()).to_json())
    data["modalities"] = ["t1", "flair"]
    with pytest.raises(CardError, match="2 modalities"):
        ModelCard.from_dict(data)


def test_save_load_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = torch.randn(1, 4, 16, 24, 8)
    with torch.no_grad():
        expected = model(x)
    out_dir = save_model(tmp_path / "m", model, make_card(model))
    assert sorted(p.name for p in out_dir.iterdir()) == ["card.json", "model.safetensors"]
    for path in (out_dir, out_dir / "model.safetensors", out_dir / "card.json"):
        loaded, card = load_model(path)
        assert not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        assert card.training["steps"] == 10 and card.training["code_version"]


def test_save_unwraps_compile_and_takes_config_from_the_model(tmp_path):
    model = build_model(tiny())
    card = make_card(model)
    model.reset_head(2)  # the card still says 3 outputs: save_model takes the model's config
    compiled = torch.compile(model)
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    save_model(tmp_path, compiled, card)
    loaded, back = load_model(tmp_path)
    assert back.model["out_channels"] == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_missing_card_is_a_clear_error(tmp_path):
    model = build_model(tiny())
    save_model(tmp_path, model, make_card(model))
    (tmp_path / "card.json").unlink()
    with pytest.raises(CardError, match="no model card card.json"):
        load_model(tmp_path / "model.safetensors")


def test_mismatched_weights_list_the_tensors(tmp_path):
    model = build_model(tiny())
    save_model(tmp_path, model, make_card(model))
    data = json.loads((tmp_path / "card.json").read_text())
    data["model"]["base_width"] = 8
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(WeightsMismatchError, match="reshaped") as info:
        load_model(tmp_path)
    assert "encoder.stages.0.convs.0.conv.weight (4, 4, 3, 3, 3) vs model (8, 4, 3, 3, 3)" in str(
        info.value)


def test_partial_weights_refuse_a_plain_load(tmp_path):
    model = build_model(tiny())
    save_model(tmp_path, model, make_card(model, ).replace(provenance={"partial": True}))
    with pytest.raises(CardError, match="load_adapted"):
        load_model(tmp_path)
    assert load_card(tmp_path).partial


def test_card_for_training_fills_preprocessing():
    from glioseg.model.card import card_for_training

    card = card_for_training(tiny(), training={"steps": 5}, spacing=(2.0, 2.0, 2.0))
    assert card.preprocessing["spacing"] == [2.0, 2.0, 2.0]
    assert card.training["steps"] == 5 and "code_version" in card.training
    assert ModelCard.from_json(card.to_json()) == card


def test_cli_card_prints_the_card(tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    model = build_model(tiny())
    save_model(tmp_path, model, make_card(model))
    result = CliRunner().invoke(app, ["card", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "t1, t1ce, t2, flair" in result.output and "brats2021" in result.output
    assert "unet3d" in result.output and "steps=10" in result.output
    missing = CliRunner().invoke(app, ["card", str(tmp_path / "nope")])
    assert missing.exit_code == 1


def test_cli_card_records_the_et_threshold(tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.infer.predict import card_et_min_voxels

    model = build_model(tiny())
    save_model(tmp_path, model, make_card(model))
    before = (tmp_path / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["card", str(tmp_path), "--et-threshold", "200"])
    assert result.exit_code == 0, result.output
    card = load_card(tmp_path)
    assert card.et_threshold == 200 and card_et_min_voxels(card) == 200
    assert (tmp_path / "model.safetensors").read_bytes() == before  # weights untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    bad = CliRunner().invoke(app, ["card", str(tmp_path), "--et-threshold", "-1"])
    assert bad.exit_code == 1 and load_card(tmp_path).et_threshold == 200


def _filled(value: float):
    torch.manual_seed(0)
    model = build_model(tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def test_model_folder_is_written_as_one_unit(tmp_path, monkeypatch):
    """A save that fails after the weights are written leaves the old weights AND old card."""
    import glioseg.model.card as card_mod

    folder = tmp_path / "best"
    old = _filled(1.0)
    save_model(folder, old, make_card(old).replace(training={"steps": 1}))
    (folder / "notes.txt").write_text("kept")

    def failing_card(path, card):
        raise OSError("disk full while writing the card")

    monkeypatch.setattr(card_mod, "save_card", failing_card)
    new = _filled(2.0)
    with pytest.raises(OSError, match="disk full"):
        save_model(folder, new, make_card(new).replace(training={"steps": 2}))
    monkeypatch.undo()
    loaded, card = load_model(folder)
    assert card.training["steps"] == 1
    assert all(bool((p == 1.0).all()) for p in loaded.parameters())  # old weights, not new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary left
    # a successful save replaces both and keeps the folder's other files
    save_model(folder, new, make_card(new).replace(training={"steps": 2}))
    loaded, card = load_model(folder)
    assert card.training["steps"] == 2 and all(bool((p == 2.0).all()) for p in loaded.parameters())
    assert (folder / "notes.txt").read_text() == "kept"


def test_a_folder_replaced_during_a_read_gives_one_version(tmp_path, monkeypatch):
    """The weights of one save are never paired with the card of another."""
    import os

    from glioseg.model.card import digest_of, read_model_files

    folder = tmp_path / "last"
    a, b = _filled(1.0), _filled(2.0)
    save_model(folder, a, make_card(a).replace(training={"steps": 1}))
    real_fdopen = os.fdopen
    swapped = []

    def fdopen(fd, *args, **kw):
        if not swapped:  # the weights file of version A is open: B replaces the folder now
            swapped.append(True)
            save_model(folder, b, make_card(b).replace(training={"steps": 2}))
        return real_fdopen(fd, *args, **kw)

    monkeypatch.setattr(os, "fdopen", fdopen)
    weights, card = read_model_files(folder)
    monkeypatch.undo()
    want = read_model_files(folder)
    assert swapped and json.loads(card)["training"]["steps"] == 2
    assert (weights, card) == want
    assert digest_of(weights, card) == digest_of(*want)


def test_model_digest_follows_weights_and_card_not_the_path(tmp_path):
    import shutil

    from glioseg.model.card import load_model_and_digest, model_digest

    model = _filled(1.0)
    save_model(tmp_path / "a", model, make_card(model))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    d = model_digest(tmp_path / "a")
    assert model_digest(tmp_path / "b") == d == load_model_and_digest(tmp_path / "a")[2]
    assert model_digest(tmp_path / "a" / "model.safetensors") == d
    data = json.loads((tmp_path / "b" / "card.json").read_text())
    data["et_threshold"] = 7
    (tmp_path / "b" / "card.json").write_text(json.dumps(data))
    assert model_digest(tmp_path / "b") != d  # another card
    save_model(tmp_path / "a", _filled(2.0), make_card(model))
    assert model_digest(tmp_path / "a") != d  # other weights


def test_card_records_the_training_orientation_of_the_cache(tmp_path):
    """The card's preprocessing.orientation is the axis codes all cached cases share."""
    import nibabel as nib
    import numpy as np
    from datafiles import tiny_brats2021_case

    from glioseg.model.card import cache_orientation, card_for_training
    from glioseg.preprocess.run import preprocess_dir

    data = tmp_path / "data"
    for i in range(2):
        tiny_brats2021_case(data, f"BraTS2021_0000{i}", seed=i)  # identity affine: R, A, S
    preprocess_dir(data, tmp_path / "cache")
    codes = cache_orientation(tmp_path / "cache")
    assert codes == ["R", "A", "S"]
    card = card_for_training(tiny(), orientation=codes)
    assert ModelCard.from_json(card.to_json()).preprocessing["orientation"] == ["R", "A", "S"]
    assert card_for_training(tiny()).preprocessing["orientation"] is None
    # a cache mixing orientations records none (cases are then used as stored)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    folder = tiny_brats2021_case(data, "BraTS2021_00002", seed=2)
    for f in folder.glob("*.nii.gz"):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), lps), f)
    preprocess_dir(data, tmp_path / "cache")
    assert cache_orientation(tmp_path / "cache") is None
    assert cache_orientation(tmp_path / "no-cache") is None




def test_a_run_folder_given_as_a_model_names_its_models(tmp_path):
    """``glioseg card RUN`` / ``finetune --from RUN`` / ``load_card(RUN)``: a training run
    folder is not a model; the error names its best/ and last/."""
    model = build_model(tiny())
    run = tmp_path / "run"
    save_model(run / "best", model, make_card(model))
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(CardError, match=r"run is a training run folder, not a model; pass .*"
                                         r"run/best$"):
        load_card(run)
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(CardError, match=r"last\.pt: a training checkpoint"):
        load_model(run / "last.pt")
    load_card(run / "best")  # the model itself still loads

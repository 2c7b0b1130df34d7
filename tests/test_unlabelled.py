"""Scans without segmentations: self-supervised pretraining takes them (blank labels through
``CaseView``), segmentation training refuses them with a message saying what to do."""

from pathlib import Path

import numpy as np
import pytest
from datafiles import write_brats_case
from test_fit import TINY

from glioseg.data.labels import MODALITIES
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as PC
from glioseg.train.cases import CaseView
from glioseg.train.data import DataError, make_loader


def _unlabelled_cache(folder: Path, n: int = 2, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        cid = f"SCAN_{i:03d}"
        image = rng.normal(size=(4, size, size, size)).astype(np.float32)
        PC.write_case(folder, cid, image, None, {"case_id": cid, "layout": "brats2023",
                                                 "shape": [size] * 3})
        ids.append(cid)
    write_json(folder / "dataset.json", {"format": PC.CACHE_FORMAT,
                                                   "modalities": list(MODALITIES),
                                                   "spacing": None, "cases": ids})
    return folder


def test_blank_label_views_feed_the_loader_and_the_cases_stay_unlabelled(tmp_path: Path):
    cases = PC.open_cache(_unlabelled_cache(tmp_path / "cache"))
    assert [c.meta["has_labels"] for c in cases] == [False, False]
    with pytest.raises(DataError, match="without labels"):
        make_loader(cases, (8, 8, 8), 2, seed=0)  # the loader still guards real cases
    views = [CaseView(c, blank_labels=True) for c in cases]
    assert all(v.meta["has_labels"] and v.meta["blank_labels"] for v in views)
    assert not any(c.meta["has_labels"] for c in cases)  # the cached case's meta is untouched
    assert views[0].labels.shape == (8, 8, 8) and not views[0].labels.any()
    image, regions = next(iter(make_loader(views, (8, 8, 8), 4, seed=0, oversample_fg=0.0)))
    assert tuple(image.shape) == (4, 4, 8, 8, 8) and tuple(regions.shape) == (4, 3, 8, 8, 8)
    assert not regions.any()
    # patch == volume, no augmentation: each patch is one case's whole image, unchanged
    whole = [np.asarray(c.image) for c in cases]
    for patch in image.numpy():
        assert any(np.array_equal(patch, w) for w in whole)


def _scans_without_segmentations(root: Path, n: int = 2) -> Path:
    """Raw BraTS 2021 case folders with the four sequences and no seg file."""
    rng = np.random.default_rng(1)
    for i in range(n):
        images = {m: (100 + 10 * rng.normal(size=(18, 16, 14))).astype(np.float32)
                  for m in MODALITIES}
        write_brats_case(root, "brats2021", index=i, images=images, seg=False)
    return root


def test_cli_pretrain_on_scans_without_segmentations_and_train_refuses_them(tmp_path: Path):
    import json

    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.model.card import load_card

    raw = _scans_without_segmentations(tmp_path / "raw")
    assert not list(raw.glob("*/*seg*"))
    sets = [a for s in TINY for a in ("--set", s)]
    res = CliRunner().invoke(app, ["pretrain", "--data", str(raw), "--out", str(tmp_path / "pre"),
                                   *sets, "--set", "train.steps=2"])
    assert res.exit_code == 0, res.output
    pre = tmp_path / "pre"
    assert not any(c.meta["has_labels"] for c in PC.open_cache(pre / "cache"))
    card = load_card(pre / "last")
    assert card.regions == tuple(f"restore_{m}" for m in MODALITIES)
    assert (pre / "last" / "model.safetensors").is_file()
    records = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)

    res = CliRunner().invoke(app, ["train", "--data", str(raw), "--out", str(tmp_path / "seg"),
                                   *sets, "--set", "train.steps=2"])
    assert res.exit_code == 1
    assert "no case with labels" in res.output and "glioseg pretrain" in res.output
    assert not (tmp_path / "seg" / "last.pt").exists()

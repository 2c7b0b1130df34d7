"""The training loop's device path (``train/fit.py`` with ``device_policy``, ``prefetch`` and
``device_step``): the choice recorded in the run folder, batches through the prefetcher, and the
step's figures read back once per log, with non-finite steps skipped and counted."""

import json
from pathlib import Path

import numpy as np
import torch
from test_fit import TINY, _records, _tiny_cache, poison_loss
from test_loop import count_reads

from glioseg.train import config as C
from glioseg.train import fit as F
from glioseg.train import prefetch as PF


def _fit(cache: Path, run: Path, *sets: str) -> dict:
    torch.set_num_threads(1)
    cfg = C.load_config("small", [*TINY, f"data.cache_dir={cache}", *sets])
    return F.fit(cfg, run)


def test_auto_settings_are_recorded_and_saved_concrete(tmp_path: Path, capsys):
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=1", "train.channels_last=auto", "train.compile=auto")
    doc = json.loads((run / "device_choice.json").read_text())
    assert doc["device"] == "cpu" and doc["requested"] == {
        "amp": "none", "channels_last": "auto", "compile": "auto"}
    assert (doc["amp"], doc["channels_last"], doc["compile"]) == ("none", True, False)
    saved = C.load_config(run / "config.yaml").train
    assert (saved.amp, saved.channels_last, saved.compile) == ("none", True, False)
    assert "device cpu: amp none (as set); channels_last True (auto" in capsys.readouterr().out


def test_the_loop_takes_its_batches_from_the_prefetcher(tmp_path: Path, monkeypatch):
    handed: list[int] = []
    real = PF.DevicePrefetcher.__next__

    def spy(self):
        batch = real(self)
        handed.append(batch.size)
        return batch
    monkeypatch.setattr(PF.DevicePrefetcher, "__next__", spy)
    cache = _tiny_cache(tmp_path / "cache", n=2)
    _fit(cache, tmp_path / "run", "train.steps=3", "train.grad_accum=2")
    assert handed == [1] * 6  # batch_size 1, 2 micro-batches per step, 3 steps


def test_nan_steps_are_skipped_and_counted_at_the_next_log(tmp_path: Path, monkeypatch, capsys):
    """log_every=3: a NaN at step 2 is skipped (weights finite), counted in the record of
    step 3, kept out of its mean loss, and reported for the window."""
    poison_loss(monkeypatch, at_call=2)
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=3", "train.log_every=3", "train.val_every=3")
    train = [r for r in _records(run) if r["split"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in train] == [(3, 1)]
    assert np.isfinite(train[0]["loss"])
    assert "steps 1-3: 1 updates skipped (non-finite gradient; last norm" in capsys.readouterr().out
    state = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_reads_back_per_log_not_per_step(tmp_path: Path, monkeypatch):
    """The loop's own modules read tensors back as often in a 6-step window as in a 2-step
    one: nothing per step (validation and the checkpoint come once in both runs)."""
    cache = _tiny_cache(tmp_path / "cache", n=2)
    counts = []
    for steps in (2, 6):
        calls = count_reads(monkeypatch, only="glioseg.train.")
        _fit(cache, tmp_path / f"run{steps}", f"train.steps={steps}",
             f"train.log_every={steps}", f"train.val_every={steps}",
             f"train.ckpt_every={steps}")
        counts.append(sum(1 for c in calls if c.split(" from ")[1] in (
            "glioseg.train.fit", "glioseg.train.loop", "glioseg.train.device_step",
            "glioseg.train.prefetch")))
        monkeypatch.undo()
    assert counts[0] == counts[1] > 0

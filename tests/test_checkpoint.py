"""Training checkpoints: weights_only round trip, RNG continuity, atomic last/previous/best."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glioseg.train import checkpoint as K


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.InstanceNorm3d(3),
                               torch.nn.Conv3d(3, 1, 1))


def _trained(steps: int = 2):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(2, 2, 6, 6, 6)
    for _ in range(steps):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched, scaler


def _state(step: int, model, opt, sched, scaler):
    return K.training_state(step=step, model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                            config={"train": {"steps": 10, "patch_size": [8, 8, 8]}},
                            rng=[K.rng_state()], best={"metric": 0.5, "step": step})


def test_round_trip_with_weights_only(tmp_path: Path):
    model, opt, sched, scaler = _trained()
    path = K.save_last(tmp_path, _state(2, model, opt, sched, scaler))
    # independent reader: plain torch.load in its safe mode
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 2 and raw["config"]["train"]["patch_size"] == [8, 8, 8]
    assert set(raw["model"]) == set(model.state_dict())

    model2 = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.InstanceNorm3d(3),
                                 torch.nn.Conv3d(3, 1, 1))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    step = K.restore(K.load_checkpoint(path), model=model2, optimizer=opt2, scheduler=sched2)
    assert step == 2
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == pytest.approx(1e-2 / 3)
    exp_avg = [opt.state[p]["exp_avg"] for p in model.parameters()]
    exp_avg2 = [opt2.state[p]["exp_avg"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg, exp_avg2, strict=True))


def test_rng_states_continue(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = K.rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    K.atomic_save({"rng": state}, tmp_path / "rng.pt")
    K.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_last_keeps_previous_and_falls_back(tmp_path: Path):
    model, opt, sched, scaler = _trained(1)
    K.save_last(tmp_path, _state(1, model, opt, sched, scaler))
    K.save_last(tmp_path, _state(2, model, opt, sched, scaler))
    assert K.load_checkpoint(tmp_path / "previous.pt")["step"] == 1
    assert K.find_resumable(tmp_path) == tmp_path / "last.pt"
    # a torn last.pt: resume falls back to the previous good one
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(K.CheckpointError, match="last.pt"):
        K.load_checkpoint(tmp_path / "last.pt")
    assert K.find_resumable(tmp_path) == tmp_path / "previous.pt"
    K.save_best(tmp_path, _state(2, model, opt, sched, scaler))
    assert K.load_checkpoint(tmp_path / "best.pt")["best"] == {"metric": 0.5, "step": 2}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_refuses_what_weights_only_cannot_read(tmp_path: Path):
    model, opt, sched, scaler = _trained(1)
    with pytest.raises(K.CheckpointError, match="ndarray"):
        K.training_state(step=1, model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                         config={"x": np.zeros(3)}, rng=[K.rng_state()])
    torch.save({"format": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(K.CheckpointError, match="not a glioseg training checkpoint"):
        K.load_checkpoint(tmp_path / "x.pt")
    assert K.find_resumable(tmp_path) is None


# --------------------------------------------------------------------------- reliability

def test_non_finite_weights_are_never_saved(tmp_path: Path):
    """A NaN model never becomes a checkpoint: last.pt, previous.pt, best.pt and the model
    folder are refused with an error naming the file and the tensor; what was there stays."""
    model, opt, sched, scaler = _trained(1)
    K.save_last(tmp_path, _state(1, model, opt, sched, scaler))
    K.save_last(tmp_path, _state(2, model, opt, sched, scaler))
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0, 0] = float("nan")
    bad = _state(3, model, opt, sched, scaler)
    with pytest.raises(K.CheckpointError, match=r"last\.pt.*non-finite.*2\.weight"):
        K.save_last(tmp_path, bad)
    with pytest.raises(K.CheckpointError, match=r"best\.pt.*2\.weight"):
        K.save_best(tmp_path, bad)
    with pytest.raises(K.CheckpointError, match="model.safetensors"):
        K.save_model_card(tmp_path / "last", model, card=None)
    assert K.load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert K.load_checkpoint(tmp_path / "previous.pt")["step"] == 1
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_save_last_is_durable_before_previous_is_replaced(tmp_path: Path, monkeypatch):
    """The new state is written to a temporary file and fsync'ed (file, then folder) before
    last.pt moves to previous.pt; the renames are made durable by a folder fsync."""
    model, opt, sched, scaler = _trained(1)
    K.save_last(tmp_path, _state(1, model, opt, sched, scaler))
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    K.save_last(tmp_path, _state(2, model, opt, sched, scaler))
    last, previous, folder = (str(tmp_path / "last.pt"), str(tmp_path / "previous.pt"),
                              str(tmp_path))
    rotate = events.index(("replace", last, previous))
    renamed = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == last)
    tmp = events[renamed][1]
    assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".last.pt.")
    # file fsync, folder fsync, then the rotation, then the rename, then a folder fsync
    synced_file = events.index(("fsync", tmp))
    synced_dir = events.index(("fsync", folder), synced_file)
    assert synced_file < synced_dir < rotate < renamed
    assert ("fsync", folder) in events[renamed + 1:]
    assert K.load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert K.load_checkpoint(tmp_path / "previous.pt")["step"] == 1


def test_save_last_failure_keeps_last_and_previous(tmp_path: Path, monkeypatch):
    """A failing write (disk full) before the rotation leaves last.pt and previous.pt as they
    were and no temporary file."""
    model, opt, sched, scaler = _trained(1)
    K.save_last(tmp_path, _state(1, model, opt, sched, scaler))
    K.save_last(tmp_path, _state(2, model, opt, sched, scaler))

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        K.save_last(tmp_path, _state(3, model, opt, sched, scaler))
    monkeypatch.undo()
    assert K.load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert K.load_checkpoint(tmp_path / "previous.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_choose_resume_reports_what_it_passes_over_and_refuses_unreadable(tmp_path: Path):
    model, opt, sched, scaler = _trained(1)
    K.save_last(tmp_path, _state(1, model, opt, sched, scaler))
    K.save_last(tmp_path, _state(2, model, opt, sched, scaler))
    choice = K.choose_resume(tmp_path)
    assert choice.path == tmp_path / "last.pt" and choice.step == 2 and choice.notes == []
    # a torn last.pt: previous.pt, with a note naming last.pt
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    choice = K.choose_resume(tmp_path)
    assert choice.path == tmp_path / "previous.pt" and choice.step == 1
    assert len(choice.notes) == 1 and f"{tmp_path / 'last.pt'}: unreadable" in choice.notes[0]
    # a last.pt holding a NaN model (written before they were refused) is passed over too
    state = _state(2, model, opt, sched, scaler)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    state["model"]["0.bias"][0] = float("inf")
    torch.save(state, tmp_path / "last.pt")
    choice = K.choose_resume(tmp_path)
    assert choice.path == tmp_path / "previous.pt" and "0.bias" in choice.notes[0]
    # nothing readable: an error naming both files, never a fresh start
    (tmp_path / "previous.pt").write_bytes(b"\0" * 64)
    with pytest.raises(K.CheckpointError) as err:
        K.choose_resume(tmp_path)
    assert "last.pt" in str(err.value) and "previous.pt" in str(err.value)
    with pytest.raises(K.CheckpointError):
        K.find_resumable(tmp_path)
    # only previous.pt, unreadable: refused as well
    (tmp_path / "last.pt").unlink()
    with pytest.raises(K.CheckpointError, match="previous.pt"):
        K.choose_resume(tmp_path)
    assert K.choose_resume(tmp_path / "fresh") is None

"""Training checkpoints: weights_only round trip, RNG continuity, atomic last/previous/best."""

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

"""The training step (``train/loop.py: train_step``): a non-finite gradient skips the update."""

import math

import pytest
import torch

from glioseg.train import loop as L


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.InstanceNorm3d(4),
                               torch.nn.Conv3d(4, 3, 1))


def _batch() -> L.Batch:
    g = torch.Generator().manual_seed(1)
    return L.Batch(torch.randn(2, 4, 6, 6, 6, generator=g),
                   (torch.rand(2, 3, 6, 6, 6, generator=g) > 0.5).float())


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def _poisoned(value: float):
    """A loss whose gradient is ``value`` (nan or inf) times the real one."""
    return lambda logits, target: _loss(logits, target) * value


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in enumerate(opt.state.values())}
    return weights, state


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_gradient_skips_the_update(grad_clip: float, bad: float):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = L.make_scaler("none", torch.device("cpu"))
    good = L.train_step(model, [_batch()], _loss, opt, scaler, "none", grad_clip)
    weights, state = _snapshot(model, opt)

    res = L.train_step(model, [_batch()], _poisoned(bad), opt, scaler, "none", grad_clip)
    # the weights and AdamW's moments and step count are exactly as before the poisoned step
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for i, s in enumerate(opt.state.values()):
        for k, v in s.items():
            assert torch.equal(v, state[i][k]), (i, k)
    assert all(p.grad is None for p in model.parameters())  # nothing left for the next step
    assert res.skipped and not math.isfinite(res.grad_norm)
    # the norm is computed (and reported) with or without clipping
    assert not good.skipped and math.isfinite(good.grad_norm) and good.grad_norm > 0

    after = L.train_step(model, [_batch()], _loss, opt, scaler, "none", grad_clip)
    assert not after.skipped
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_fp16_scaler_skips_and_lowers_its_scale():
    """With a loss scaler (fp16) an overflow is skipped as before and the scale is halved;
    the step reports it as skipped."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)
    weights, _ = _snapshot(model, opt)
    res = L.train_step(model, [_batch()], _poisoned(math.inf), opt, scaler, "none", 0.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert scaler.get_scale() == 2.0**9
    assert res.skipped
    res = L.train_step(model, [_batch()], _loss, opt, scaler, "none", 0.0)
    assert not res.skipped and math.isfinite(res.grad_norm)
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())

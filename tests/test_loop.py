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


# --------------------------------------------------------------------------- no host sync

SYNC_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
"""Tensor methods that bring a value back to the host (on a GPU: wait for the device)."""


def count_reads(monkeypatch, only: str | None = None) -> list[str]:
    """Patch the read-back methods of ``torch.Tensor`` to record each call (only calls made
    from a module whose name starts with ``only``, when given); returns the record."""
    import sys

    calls: list[str] = []
    for name in SYNC_READS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if only is None or caller.startswith(only):
                calls.append(f"{_name} from {caller}")
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def _fused(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                           fused=True)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_skips_a_nan_step_on_the_device(name: str):
    """Fused kernels (every GPU run's optimiser) take the skip decision as ``found_inf``:
    weights and state (AdamW's step count too) are unchanged, and the next step applies."""
    model = _model()
    opt = _fused(name, model)
    scaler = L.make_scaler("none", torch.device("cpu"))
    L.train_step(model, [_batch()], _loss, opt, scaler, "none", 12.0)
    weights, state = _snapshot(model, opt)
    res = L.train_step(model, [_batch()], _poisoned(math.nan), opt, scaler, "none", 12.0)
    assert res.skipped
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for i, s in enumerate(opt.state.values()):
        for k, v in s.items():
            assert torch.equal(v, state[i][k]), (i, k)
    assert not L.train_step(model, [_batch()], _loss, opt, scaler, "none", 12.0).skipped
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def _optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``fused-*``: torch's fused kernels (every GPU run's optimiser); ``foreach-*``: others."""
    kind, algo = name.split("-")
    if algo == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, **{kind: True})
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                           weight_decay=3e-5, **{kind: True})


OPTIMIZERS = ["foreach-adamw", "fused-adamw", "foreach-sgd", "fused-sgd"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_skipped_first_step_leaves_fresh_state(name: str):
    """An optimiser whose very first step is skipped: weights unchanged, and the next steps
    are bit for bit those of an optimiser that never saw the bad step. (Fused SGD would
    otherwise keep the uninitialised memory it allocates for its momentum: the kernel skips
    before it fills the buffer.)"""
    a, b = _model(), _model()
    opt_a, opt_b = _optimizer(name, a), _optimizer(name, b)
    scaler = L.make_scaler("none", torch.device("cpu"))
    weights, _ = _snapshot(a, opt_a)
    assert L.train_step(a, [_batch()], _poisoned(math.inf), opt_a, scaler, "none", 0.0).skipped
    for k, v in a.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for _ in range(3):
        L.train_step(a, [_batch()], _loss, opt_a, scaler, "none", 0.0)
        L.train_step(b, [_batch()], _loss, opt_b, scaler, "none", 0.0)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", ["fused-sgd", "foreach-sgd"])
def test_the_guarded_first_step_is_torchs_own(name: str):
    """The zero momentum buffer the guarded step gives fused SGD changes nothing when the step
    is good: two steps match ``optimizer.step()`` with no guard, bit for bit."""
    from glioseg.train.device_step import guarded_step

    a, b = _model(), _model()
    opt_a, opt_b = _optimizer(name, a), _optimizer(name, b)
    for _ in range(2):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            out = model(_batch().image)
            _loss(out, _batch().target).backward()
        guarded_step(opt_a, torch.tensor(False))
        opt_b.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_step_reads_nothing_back_to_the_host(monkeypatch, name: str):
    """Between log steps nothing is read back: with a fused optimiser no tensor read-back at
    all during three steps (one of them non-finite), and the result is device tensors."""
    model = _model()
    opt = _fused(name, model)
    scaler = L.make_scaler("none", torch.device("cpu"))
    L.train_step(model, [_batch()], _loss, opt, scaler, "none", 12.0)  # state created
    calls = count_reads(monkeypatch)
    results = [L.train_step(model, [_batch()], fn, opt, scaler, "none", 12.0)
               for fn in (_loss, _poisoned(math.nan), _loss)]
    assert calls == []
    assert all(isinstance(r.loss_t, torch.Tensor) and isinstance(r.skipped_t, torch.Tensor)
               for r in results)
    monkeypatch.undo()
    assert [r.skipped for r in results] == [False, True, False]


def test_the_step_code_reads_nothing_back_with_any_optimizer(monkeypatch):
    """With a non-fused optimiser (CPU runs) glioseg's own code still reads nothing back
    (torch's foreach AdamW reads its step count, a CPU tensor even for GPU parameters)."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    scaler = L.make_scaler("none", torch.device("cpu"))
    calls = count_reads(monkeypatch, only="glioseg")
    for fn in (_loss, _poisoned(math.nan), _loss):
        L.train_step(model, [_batch()], fn, opt, scaler, "none", 1.0)
    assert calls == []


def test_step_stats_sum_on_the_device_and_read_once(monkeypatch):
    """``StepStats.add`` never reads back; ``read`` gives the mean of the finite losses, the
    skipped count, the last norm and the run of skips in a row (carried across reads)."""
    from glioseg.train.device_step import StepStats

    model = _model()
    opt = _fused("adamw", model)
    scaler = L.make_scaler("none", torch.device("cpu"))
    stats = StepStats(torch.device("cpu"))
    fns = [_loss, _poisoned(math.nan), _loss, _poisoned(math.inf), _poisoned(math.nan)]
    results = [L.train_step(model, [_batch()], fn, opt, scaler, "none", 12.0) for fn in fns]
    calls = count_reads(monkeypatch)
    for r in results[:3]:
        stats.add(r)
    assert calls == []
    monkeypatch.undo()
    first = stats.read()
    assert first.skipped == 1 and first.finite_steps == 2 and first.skips_in_a_row == 0
    assert first.mean_loss == pytest.approx((results[0].loss + results[2].loss) / 2)
    for r in results[3:]:
        stats.add(r)
    second = stats.read()
    assert second.skipped == 2 and second.skips_in_a_row == 2 and second.finite_steps == 0
    assert second.longest_skip_run == 2 and first.longest_skip_run == 1
    assert math.isnan(second.mean_loss) and not math.isfinite(second.grad_norm)
    # a run of skips that ended inside the window is still seen; the next window starts from
    # the run in progress
    stats.add(results[0])
    third = stats.read()
    assert third.longest_skip_run == 2 and third.skips_in_a_row == 0
    assert stats.read().longest_skip_run == 0

"""Learning-rate schedules at known points and the optimizers' settings."""

import math

import pytest
import torch

from glioseg.train.schedule import build_optimizer, poly_lr, set_lr, warmup_cosine_lr


def test_poly_lr_known_points():
    assert poly_lr(0, 1000, 0.01) == pytest.approx(0.01)
    assert poly_lr(500, 1000, 0.01) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(750, 1000, 0.01, exponent=2.0) == pytest.approx(0.01 * 0.0625)
    assert poly_lr(1000, 1000, 0.01) == 0.0
    assert poly_lr(1200, 1000, 0.01) == 0.0


def test_warmup_cosine_known_points():
    base, lo = 1e-3, 1e-5
    assert warmup_cosine_lr(0, 110, base, warmup=10, min_lr=lo) == pytest.approx(1e-4)
    assert warmup_cosine_lr(4, 110, base, warmup=10, min_lr=lo) == pytest.approx(5e-4)
    assert warmup_cosine_lr(9, 110, base, warmup=10, min_lr=lo) == pytest.approx(base)
    assert warmup_cosine_lr(10, 110, base, warmup=10, min_lr=lo) == pytest.approx(base)
    assert warmup_cosine_lr(60, 110, base, warmup=10, min_lr=lo) == pytest.approx((base + lo) / 2)
    # a quarter of the way through the cosine: (1 + cos(pi/4)) / 2
    q = lo + (base - lo) * (1 + math.cos(math.pi / 4)) / 2
    assert warmup_cosine_lr(35, 110, base, warmup=10, min_lr=lo) == pytest.approx(q)
    assert warmup_cosine_lr(110, 110, base, warmup=10, min_lr=lo) == pytest.approx(lo)
    assert warmup_cosine_lr(0, 100, base) == pytest.approx(base)


def test_schedule_errors():
    with pytest.raises(ValueError):
        poly_lr(-1, 10, 0.1)
    with pytest.raises(ValueError):
        poly_lr(0, 0, 0.1)
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine_lr(0, 10, 0.1, warmup=10)


def test_build_optimizer_settings_and_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    sgd = build_optimizer([a, b], "sgd", lr=0.01)
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert g["nesterov"] is True and g["momentum"] == 0.99 and g["weight_decay"] == 3e-5
    adamw = build_optimizer([{"params": [a], "lr_scale": 0.1}, {"params": [b]}], "adamw",
                            lr=1e-3, weight_decay=1e-2)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([1e-4, 1e-3])
    set_lr(adamw, 2e-3)
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([2e-4, 2e-3])
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer([a], "lbfgs")


def test_lr_factor_warmup_then_decay():
    from glioseg.train.schedule import lr_factor

    assert lr_factor(0, 110, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, 110, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(60, 110, warmup_steps=10, kind="poly") == pytest.approx(0.5**0.9)
    assert lr_factor(60, 110, warmup_steps=10, kind="cosine") == pytest.approx(0.5)
    assert lr_factor(60, 110, warmup_steps=10, kind="constant") == 1.0
    assert lr_factor(110, 110, warmup_steps=0, kind="poly") == 0.0
    # shorter than its warm-up: the ramp over steps 0-3 (w = 4), the peak at the last step
    assert [lr_factor(s, 5, warmup_steps=50) for s in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0])
    assert lr_factor(5, 5, warmup_steps=50) == 0.0  # LambdaLR's step after the last
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(20, 110, 10, kind="step")


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_multi_tensor_update_on_cpu_equals_the_loop(name):
    """On CPU the optimiser uses the multi-tensor (``foreach``) kernels; ten steps give the
    weights of torch's per-parameter loop to float rounding."""
    torch.manual_seed(0)
    init = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(10)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = build_optimizer(ours, name, lr=0.01, weight_decay=0.01)
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]
    cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    extra = {"momentum": 0.99, "nesterov": True} if name == "sgd" else {}
    ref_opt = cls(ref, lr=0.01, weight_decay=0.01, foreach=False, **extra)
    for g in grads:
        for p, q, gi in zip(ours, ref, g, strict=True):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_fused_kernels_for_gpu_parameters_and_kept_across_a_resume():
    """Parameters all on a GPU ask for the fused kernels; a checkpoint written with them and
    restored on a CPU run keeps this run's choice (``load_state_dict`` would copy the saved
    one)."""
    from glioseg.train import checkpoint as ckpt
    from glioseg.train.schedule import optimizer_kernels

    class OnGpu:
        device = torch.device("cuda")

    assert optimizer_kernels([OnGpu(), OnGpu()]) == {"fused": True}
    assert optimizer_kernels([{"params": [OnGpu()]}, {"params": [torch.zeros(1)]}]) == {
        "foreach": True}
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), "adamw", lr=1e-3)
    state = opt.state_dict()
    state["param_groups"][0].update(fused=True, foreach=None)  # as saved by a GPU run
    ckpt.restore({"model": model.state_dict(), "optimizer": state, "step": 4}, model=model,
                 optimizer=opt)
    assert opt.param_groups[0]["foreach"] is True and opt.param_groups[0]["fused"] is None

"""Fine-tuning strategies: frozen parameters stay put through real optimizer steps."""

import pytest
import torch

from glioseg.model.registry import ModelConfig, build_model
from glioseg.train.schedule import build_optimizer, set_lr
from glioseg.transfer.freeze import (
    StrategyError,
    apply_gradual,
    gradual_trainable,
    param_groups,
)

torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    base = dict(base_width=4, n_stages=3, max_width=16, patch_size=(16, 16, 16))
    base.update(kw)
    return ModelConfig(**base)


def step(model, groups, name="sgd"):
    """One optimizer step on a loss touching every output; returns the parameters before."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = build_optimizer(groups, name, lr=0.1, weight_decay=0.01)
    model.train()
    out = model(torch.randn(2, model.config.in_channels, 8, 8, 8))
    out = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in out).backward()
    opt.step()
    return before


def changed(model, before):
    return {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}


def test_frozen_encoder_stays_put_but_its_norms_adapt():
    torch.manual_seed(0)
    model = build_model(tiny())
    groups = param_groups(model, "frozen-encoder")
    before = step(model, groups)
    moved = changed(model, before)
    names = [k for k, _ in model.named_parameters()]
    encoder_convs = [k for k in names if k.startswith("encoder.") and ".conv." in k]
    encoder_norms = [k for k in names if k.startswith("encoder.") and ".norm." in k]
    decoder = [k for k in names if k.startswith("decoder.")]
    assert encoder_convs and not moved & set(encoder_convs)
    assert set(encoder_norms) <= moved
    assert set(decoder) <= moved


def test_frozen_encoder_without_norm_training():
    torch.manual_seed(0)
    model = build_model(tiny())
    before = step(model, param_groups(model, "frozen-encoder", train_norms=False))
    assert not {k for k in changed(model, before) if k.startswith("encoder.")}


def test_gradual_trainable_known_points():
    assert gradual_trainable(0, 100, 4) == 1
    assert gradual_trainable(24, 100, 4) == 1
    assert gradual_trainable(25, 100, 4) == 2
    assert gradual_trainable(50, 100, 4) == 3
    assert gradual_trainable(99, 100, 4) == 4
    assert gradual_trainable(150, 100, 4) == 4
    with pytest.raises(ValueError):
        gradual_trainable(-1, 100, 4)


def test_gradual_starts_with_the_head_only():
    torch.manual_seed(0)
    model = build_model(tiny())
    groups = param_groups(model, "gradual", train_norms=False)
    before = step(model, groups, "adamw")
    moved = changed(model, before)
    assert moved and all(k.startswith("decoder.heads.") for k in moved)
    # 7 stage groups (3 encoder, 2 decoder, heads): at the last step all train
    n = len(model.stage_groups())
    assert apply_gradual(model, 99, 100, train_norms=False) == n
    assert all(p.requires_grad for p in model.parameters())
    assert apply_gradual(model, 30, 100, train_norms=False) == 1 + (30 * n) // 100


def test_discriminative_learning_rates_decay_towards_the_input():
    model = build_model(tiny())
    groups = param_groups(model, "discriminative", layer_decay=0.5)
    n = len(model.stage_groups())
    assert [g["lr_scale"] for g in groups] == pytest.approx([0.5 ** (n - 1 - i) for i in range(n)])
    opt = build_optimizer(groups, "adamw", lr=1e-3)
    set_lr(opt, 1e-3)
    assert opt.param_groups[-1]["lr"] == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** (n - 1))
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))


def test_segresnet_frozen_encoder():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="segresnet", base_width=8, blocks_down=(1, 1, 1),
                                    blocks_up=(1, 1)))
    before = step(model, param_groups(model, "frozen-encoder", train_norms=False))
    moved = changed(model, before)
    assert not {k for k in moved if k.startswith(("convInit.", "down_layers."))}
    assert {k for k in moved if k.startswith("conv_final.")}


def test_unknown_strategy():
    with pytest.raises(StrategyError, match="unknown fine-tuning strategy"):
        param_groups(build_model(tiny()), "lora")

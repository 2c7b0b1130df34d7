"""train/components.py: the live objects of a run built from its config: the schedule follows
``lr_factor``, the loss follows ``loss.*``, the model is seeded and checked against the patch
size, a fresh ``optim.lr`` replaces a restored schedule's peak."""

import dataclasses

import pytest
import torch
from test_fit import TINY

from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train.components import (
    apply_lr,
    build_components,
    load_initial_weights,
    make_loss,
    make_optimizer,
    make_scheduler,
    restoration_loss,
    wrap,
)
from glioseg.train.errors import TrainError


def test_training_scheduler_follows_lr_factor():
    """The run's scheduler (``make_scheduler``) gives peak x ``lr_factor`` at every step."""
    from glioseg.train.schedule import lr_factor

    cfg = C.load_config("small", ["train.steps=30", "optim.warmup_steps=5", "optim.lr=0.01",
                                  "optim.schedule=cosine"])
    opt = make_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(1))])
    sched = make_scheduler(cfg, opt)
    got = []
    for _ in range(30):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx([0.01 * lr_factor(s, 30, 5, "cosine") for s in range(30)])
    assert got[4] == pytest.approx(0.01) and got[0] == pytest.approx(0.002)
    bad = C.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="step"))
    with pytest.raises(TrainError, match="unknown schedule"):
        make_scheduler(bad, opt)


def test_loss_config_reaches_the_training_loss():
    """``loss.*`` keys build the run's loss: batch Dice and term weights change its value as
    the pure functions say."""
    from glioseg.train.losses import DiceBCELoss, soft_dice_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, generator=g)
    target = (torch.rand(2, 3, 8, 8, 8, generator=g) > 0.7).float()
    default = make_loss(C.load_config("small"))(logits, target)
    assert default == pytest.approx(float(DiceBCELoss()(logits, target)))
    batch = make_loss(C.load_config("small", ["loss.batch_dice=true", "loss.bce_weight=0"]))
    assert batch(logits, target) == pytest.approx(
        float(soft_dice_loss(logits, target, batch_dice=True)))
    assert batch(logits, target) != pytest.approx(float(soft_dice_loss(logits, target)))
    with pytest.raises(C.ConfigError, match="loss"):
        C.load_config("small", ["loss.dice_weight=0", "loss.bce_weight=0"])


def test_pretraining_restores_in_float32_from_the_first_output():
    cfg = C.load_config("small", ["train.task=genesis"])
    assert make_loss(cfg) is restoration_loss
    target = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    out = (target + 2).to(torch.bfloat16)
    assert restoration_loss(out, target).dtype == torch.float32
    assert restoration_loss([out, torch.zeros(1)], target).item() == pytest.approx(4.0)


def test_components_are_seeded_and_wrapped_as_asked():
    cfg = C.load_config("small", TINY)
    a, b = build_components(cfg, D.DistInfo()), build_components(cfg, D.DistInfo())
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k  # train.seed: the same weights on every rank
    assert a.divisor > 1 and a.load_report is None and a.net is a.model
    wrap(a, cfg, D.DistInfo())
    assert a.net is a.model  # one process, no compile: nothing to wrap


def test_missing_initial_weights_are_a_train_error(tmp_path):
    cfg = C.load_config("small", [*TINY, f"transfer.init_from={tmp_path / 'nope'}"])
    from glioseg.model.registry import build_model

    with pytest.raises(TrainError, match="transfer.init_from"):
        load_initial_weights(cfg, build_model(cfg.model))


def test_apply_lr_makes_the_restored_schedule_peak_at_the_new_rate():
    cfg = C.load_config("small", [*TINY, "train.steps=10", "optim.warmup_steps=0",
                                  "optim.schedule=constant", "optim.lr=0.01"])
    comp = build_components(cfg, D.DistInfo())
    for _ in range(3):
        comp.optimizer.step()
        comp.scheduler.step()
    assert comp.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    apply_lr(comp, [0.5 * base for base in comp.scheduler.base_lrs])
    assert comp.scheduler.last_epoch == 3  # the step is the restored one
    assert [g["lr"] for g in comp.optimizer.param_groups] == pytest.approx(
        [0.005] * len(comp.optimizer.param_groups))
    assert comp.scheduler.get_last_lr() == pytest.approx([0.005] * len(comp.scheduler.base_lrs))
    comp.optimizer.step()
    comp.scheduler.step()
    assert comp.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)

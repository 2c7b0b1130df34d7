"""The live objects of a training run, built from its config: model (fresh or loaded from
``transfer.init_from``), optimiser with the fine-tuning strategy's parameter groups, learning-
rate schedule, loss scaler and loss; then wrapped for DDP and ``torch.compile``. What the
initial weights loaded is printed and kept in the run folder (``write_load_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from glioseg.io_atomic import write_json, write_text
from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import loop as train_loop
from glioseg.train.errors import TrainError


@dataclass
class Components:
    """The live objects of a run.

    Attributes:
        model: the plain model (for checkpoints and validation).
        net: what the step calls: ``model`` wrapped by DDP and/or ``torch.compile``.
    """

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: train_loop.LossFn
    divisor: int
    load_report: Any = None
    """What ``transfer.init_from`` loaded (``glioseg.model.weights.LoadReport``) or None."""


def make_optimizer(cfg: C.OptimConfig, params: Any) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) from the optim config (``glioseg.train.schedule``)."""
    from glioseg.train.schedule import build_optimizer

    return build_optimizer(params, name=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           momentum=cfg.momentum)


def make_scheduler(cfg: C.Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then decay as a ``LambdaLR`` (its state is the step: checkpoints restore it)."""
    from glioseg.train.schedule import lr_factor

    o, total = cfg.optim, cfg.train.steps
    try:
        lr_factor(0, total, o.warmup_steps, o.schedule)  # fail now on a bad schedule
    except ValueError as exc:
        raise TrainError(f"optim: {exc}") from None
    if not any(g.get("gated") for g in optimizer.param_groups):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, o.warmup_steps, o.schedule))
    from glioseg.transfer.freeze import gradual_lr_gate

    n_stages = 1 + max(int(g["depth"]) for g in optimizer.param_groups)

    def gated(group: dict[str, Any]) -> Any:
        return lambda step: (lr_factor(step, total, o.warmup_steps, o.schedule)
                             * gradual_lr_gate(group, step, total, n_stages))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [gated(g) for g in optimizer.param_groups])


def make_loss(cfg: C.Config) -> train_loop.LossFn:
    """Soft Dice + BCE over the regions, summed over the deep-supervision scales when the model
    returns several (``glioseg.train.losses``)."""
    from glioseg.train.losses import make_region_loss

    if cfg.train.task == "genesis":
        return restoration_loss
    lo = cfg.loss
    # the deep-supervision wrapper also takes one tensor (models without deep supervision)
    return make_region_loss(True, dice_weight=lo.dice_weight, bce_weight=lo.bce_weight,
                            batch_dice=lo.batch_dice, target_downsampling=lo.target_downsampling)


def restoration_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Models Genesis objective: mean squared error between the restored and the original
    (z-scored) patch, in float32 whatever the autocast dtype."""
    if isinstance(output, list | tuple):
        output = output[0]
    return torch.nn.functional.mse_loss(output.float(), target.float())


def load_initial_weights(cfg: C.Config, model: torch.nn.Module) -> Any:
    """Load ``transfer.init_from`` into ``model`` by name and shape (modalities mapped by name,
    head rows by region name); returns the :class:`glioseg.model.weights.LoadReport`."""
    from glioseg.data.labels import REGIONS
    from glioseg.model.weights import load_pretrained

    t = cfg.transfer
    net = model
    skip = tuple(getattr(net, "head_prefixes", ())) if t.new_head else ()
    regions = (tuple(f"restore_{m}" for m in cfg.data.modalities)
               if cfg.train.task == "genesis" else REGIONS)
    try:
        report, _ = load_pretrained(model, t.init_from, target_modalities=cfg.data.modalities,
                                    target_regions=regions, skip_prefixes=skip)
    except (OSError, ValueError) as exc:
        raise TrainError(f"transfer.init_from {t.init_from}: {exc}") from None
    return report


def transfer_param_groups(cfg: C.Config, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Optimizer groups of the fine-tuning strategy (``glioseg.transfer.freeze``), each with
    ``lr = optim.lr * lr_scale``; ``gradual`` uses learning-rate gates (DDP-safe)."""
    from glioseg.transfer import freeze as FZ

    t = cfg.transfer
    decay = t.layer_decay or None
    try:
        if t.strategy == "gradual":
            groups = FZ.gated_param_groups(model, layer_decay=decay or 1.0,
                                           train_norms=t.train_norms)
        else:
            groups = FZ.param_groups(model, t.strategy, layer_decay=decay,
                                     train_norms=t.train_norms)
    except FZ.StrategyError as exc:
        raise TrainError(f"transfer.strategy {t.strategy}: {exc}") from None
    return groups  # build_optimizer sets each group's lr to optim.lr * lr_scale


def build_components(cfg: C.Config, info: D.DistInfo, *, fresh: bool = True) -> Components:
    """Model (seeded by ``train.seed``, identical on every rank; loaded from
    ``transfer.init_from`` on a fresh start), optimiser with the strategy's parameter groups,
    schedule, scaler and loss. The load report goes to ``comp.load_report``."""
    from glioseg.model.registry import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    report = None
    if cfg.transfer.init_from and fresh:
        report = load_initial_weights(cfg, model)
    model = model.to(info.device)
    model = model.to(memory_format=train_loop.memory_format(cfg.train.channels_last))
    transfer = bool(cfg.transfer.init_from)
    params: Any = transfer_param_groups(cfg, model) if transfer else model.parameters()
    optimizer = make_optimizer(cfg.optim, params)
    scheduler = make_scheduler(cfg, optimizer)
    scaler = train_loop.make_scaler(cfg.train.amp, info.device)
    divisor = int(getattr(model, "divisor", 1))
    bad = [p for p in cfg.patch_size if p % divisor]
    if bad:
        raise TrainError(f"data.patch_size {list(cfg.patch_size)} is not a multiple of the "
                         f"model's divisor {divisor}")
    comp = Components(model, model, optimizer, scheduler, scaler, make_loss(cfg), divisor)
    comp.load_report = report
    return comp


def wrap(comp: Components, cfg: C.Config, info: D.DistInfo) -> None:
    """DDP-wrap (when distributed) and compile (when asked) ``comp.model`` into ``comp.net``;
    call after restoring a checkpoint so every rank starts from the same weights.

    DDP waits for a gradient of every parameter that requires one, but some never get one
    from the run's loss: with deep supervision the coarsest head (loss weight 0, left out of
    the loss as nnU-Net does), without it (Models Genesis pretraining) every head but the
    full-resolution one. Those (``gradient_free_parameters``) are set not to require a
    gradient, which changes nothing (they had none, so the optimiser never moved them) and
    leaves DDP's ``find_unused_parameters`` off: no search of the autograd graph at every
    step, and no warning that it found nothing (it could not: the coarsest head's output is
    among the model's outputs, only the loss leaves it out)."""
    net: torch.nn.Module = comp.model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        for _, p in gradient_free_parameters(comp, cfg, info.device):
            p.requires_grad_(False)
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = DDP(net, device_ids=ids, find_unused_parameters=False)
    if cfg.train.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    comp.net = net


def gradient_free_parameters(comp: Components, cfg: C.Config,
                             device: torch.device) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of ``comp.model`` that require a gradient but get none from the run's
    loss: found with one forward and backward of a random patch of ``data.patch_size`` in
    training mode (float32), which leaves the model's weights, buffers and ``.grad`` and the
    random generators as they were."""
    model = comp.model
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    in_channels = int(getattr(getattr(model, "config", None), "in_channels",
                              len(cfg.data.modalities)))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            model.train()
            x = torch.randn(1, in_channels, *cfg.patch_size, device=device)
            x = x.contiguous(memory_format=train_loop.memory_format(cfg.train.channels_last))
            out = model(x)
            full = out[0] if isinstance(out, list | tuple) else out
            loss = comp.loss_fn(out, torch.zeros_like(full))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return [(n, p) for (n, p), g in zip(named, grads, strict=True) if g is None]


def apply_lr(comp: Components, fresh_base_lrs: Sequence[float]) -> None:
    """After a restore, make the schedule peak at this run's ``optim.lr`` from the restored
    step on: the optimiser and scheduler states hold the checkpoint's learning rates, so each
    group's base rate is set to the freshly built one (``optim.lr`` x its scale) and the
    current rate to base x the schedule's factor at the restored step."""
    sched = comp.scheduler
    sched.base_lrs = list(fresh_base_lrs)
    for group, base, factor in zip(comp.optimizer.param_groups, sched.base_lrs,
                                   sched.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in comp.optimizer.param_groups]  # type: ignore[attr-defined]


def write_load_report(run_dir: Path, cfg: C.Config, comp: Components) -> None:
    """Print the load report and keep it in ``RUN_DIR/load_report.txt`` and ``.json``."""
    import dataclasses

    from glioseg.transfer.freeze import freeze_summary

    report = comp.load_report
    text = (f"initialised from {cfg.transfer.init_from}\n{report}\n"
            f"strategy {cfg.transfer.strategy}: {freeze_summary(comp.model)}")
    if cfg.transfer.strategy == "gradual":
        text += " (gradual: stages unfreeze from the head by learning-rate gates)"
    tqdm.write(text)
    write_text(run_dir / "load_report.txt", text + "\n")
    write_json(run_dir / "load_report.json",
               {"init_from": cfg.transfer.init_from, "strategy": cfg.transfer.strategy,
                **dataclasses.asdict(report)})

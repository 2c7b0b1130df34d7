"""``glioseg train``: fit a model on a preprocessed cache, on one process or many (torchrun).

A run folder holds everything about a run::

    RUN_DIR/config.yaml       the resolved config (values only)
    RUN_DIR/metrics.jsonl     one JSON record per log: {"step", "split": "train"|"val", ...}
    RUN_DIR/tb/               TensorBoard event files
    RUN_DIR/last.pt, previous.pt, best.pt, last/, best/     (see ``checkpoint.py``)

A worker always resumes from the run folder's last checkpoint when there is one and its config
matches (so torchrun ``--max-restarts`` brings a crashed run back by itself); the steps and the
records of ``metrics.jsonl`` continue from the checkpoint's step. Rank 0 chooses the checkpoint
for every rank; one that cannot be read is reported (``previous.pt`` is then used) and a folder
whose checkpoints all fail to read is refused, never restarted from step 0.

Validation: ``data.n_val`` labelled cases are held out at random (seeded by ``train.seed``,
see ``split_cases``; or every case of ``data.val_cache``); every
``train.val_every`` steps each rank predicts its share of them and the region Dice is averaged
over all cases with an all-reduce.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from glioseg.errors import GliosegError
from glioseg.io_atomic import write_json, write_text
from glioseg.records import RecordsError, flatten, read_jsonl
from glioseg.runinfo import record_training
from glioseg.train import checkpoint as ckpt
from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import loop as L

RESUME_MUTABLE = frozenset({
    "data.cache_dir", "data.workers", "train.steps", "train.val_every", "train.ckpt_every",
    "train.log_every", "train.threads", "train.device", "train.compile",
    "optim.lr", "train.amp",
})
"""Config keys that may differ between a checkpoint and the run that resumes it (what changed
is printed and logged as a ``split: resume`` record of ``metrics.jsonl``). ``optim.lr`` and
``train.amp`` are the remedies a diverged run needs: a new ``optim.lr`` replaces the schedule's
peak from the resumed step on (``apply_lr``); a new precision takes a fresh loss scaler."""

MAX_SKIPS_IN_A_ROW = 50
"""Consecutive steps with a non-finite gradient (each skipped, as a GradScaler skips) after
which the run stops: the model is no longer learning (fp16's scaler needs a handful at most)."""


class TrainError(GliosegError, ValueError):
    """A training run that cannot start; the message names the folder or key."""


UNLABELLED_HINT = ("segmentation training needs labelled cases; to learn from unlabelled scans, "
                   "pretrain on them (`glioseg pretrain --data DIR --out RUN_DIR`) and fine-tune "
                   "the result on a few labelled cases (`glioseg finetune`)")


# --------------------------------------------------------------------------- config matching

def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Keys of ``RESUME_MUTABLE`` whose values differ: ``{"optim.lr": [old, new], ...}``."""
    a, b = flatten(saved), flatten(current)
    return {k: [a.get(k), b.get(k)] for k in sorted(RESUME_MUTABLE)
            if a.get(k, "<absent>") != b.get(k, "<absent>")}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys (outside ``RESUME_MUTABLE``) whose values differ: ``["train.seed: 0 != 1", ...]``."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MUTABLE:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} != {b.get(key, '<absent>')!r}")
    return diffs


# --------------------------------------------------------------------------- components

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
    loss_fn: L.LossFn
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


def make_loss(cfg: C.Config) -> L.LossFn:
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
    model = model.to(memory_format=L.memory_format(cfg.train.channels_last))
    transfer = bool(cfg.transfer.init_from)
    params: Any = transfer_param_groups(cfg, model) if transfer else model.parameters()
    optimizer = make_optimizer(cfg.optim, params)
    scheduler = make_scheduler(cfg, optimizer)
    scaler = L.make_scaler(cfg.train.amp, info.device)
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
    call after restoring a checkpoint so every rank starts from the same weights."""
    net: torch.nn.Module = comp.model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        # Some heads never get a gradient: with deep supervision the coarsest (loss weight 0,
        # left out of the loss as nnU-Net does), without it (Models Genesis pretraining) all but
        # the full-resolution one; DDP must be told or it waits for them (both cases tested).
        # (DDP may still warn that it found no unused parameters: the two-rank tests of both
        # cases fail without the flag.)
        net = DDP(net, device_ids=ids, find_unused_parameters=True)
    if cfg.train.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    comp.net = net


# --------------------------------------------------------------------------- data

class CaseView:
    """A cached case seen through ``data.modalities`` (``image`` keeps only those channels, in
    that order) and, for self-supervised pretraining, with all-background labels when it has
    none. Picklable: loader workers receive paths, not voxels.

    ``meta`` describes the view: a view with blank labels has labels (all background), so its
    ``meta["has_labels"]`` is True (and ``meta["blank_labels"]`` marks them); the loader, which
    refuses cases without labels, then takes it. The cached case's own ``meta`` is unchanged.
    """

    def __init__(self, case: Any, channels: Sequence[int] | None = None,
                 blank_labels: bool = False) -> None:
        self.case = case
        self.case_id = case.case_id
        self.channels = None if channels is None else [int(c) for c in channels]
        self.blank_labels = blank_labels and not case.meta.get("has_labels")
        self.meta = ({**case.meta, "has_labels": True, "blank_labels": True}
                     if self.blank_labels else case.meta)

    @property
    def image(self) -> Any:
        img = self.case.image
        return img if self.channels is None else img[self.channels]

    @property
    def labels(self) -> Any:
        if self.blank_labels:
            import numpy as np

            # a read-only zero of the volume's shape that holds one byte, not a volume
            return np.broadcast_to(np.zeros((), np.uint8), self.case.shape)
        return self.case.labels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.case.shape

    @property
    def locations(self) -> dict[int, Any]:
        return {} if self.blank_labels else self.case.locations

    def __repr__(self) -> str:
        return f"CaseView({self.case_id!r}, channels={self.channels})"


def channel_indices(modalities: Sequence[str]) -> list[int]:
    """Cache channels (always ``MODALITIES`` order) of ``modalities``, in their order."""
    from glioseg.data.labels import MODALITIES

    return [MODALITIES.index(m) for m in modalities]


def select_cases(cfg: C.Config, cases: Sequence[Any],
                 val_cases: Sequence[Any] | None = None) -> tuple[list[Any], list[Any]]:
    """(training cases, validation cases) of a run.

    ``data.cases`` restricts the cache to those ids (an unknown id is an error naming it);
    ``val_cases`` (the labelled cases of ``data.val_cache``) replaces the random hold-out.
    Pretraining (``train.task=genesis``) trains on every chosen case, labelled or not, and does
    not validate. Validation cases are views restricted to ``data.modalities``. A chosen case
    whose cache holds no data for one of ``data.modalities`` is an error naming it.
    """
    from glioseg.preprocess.cache import require_modalities

    wanted = list(cfg.data.cases)
    if wanted:
        by_id = {c.case_id: c for c in cases}
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise TrainError(f"data.cases: {', '.join(unknown[:5])} not in the cache "
                             f"{cfg.data.cache_dir} ({len(by_id)} cases)")
        cases = [by_id[i] for i in wanted]
    if cfg.train.task == "genesis":
        if not cases:
            raise TrainError(f"{cfg.data.cache_dir}: no case to pretrain on")
        require_modalities(cases, cfg.data.modalities)
        return [CaseView(c, blank_labels=True) for c in cases], []
    channels = channel_indices(cfg.data.modalities)
    if val_cases is not None:
        train = [c for c in cases if c.meta.get("has_labels")]
        if not train:
            raise TrainError(f"{cfg.data.cache_dir}: none of the {len(cases)} chosen cases has "
                             f"labels: nothing to train on; {UNLABELLED_HINT}")
        val_used = [c for c in val_cases if c.meta.get("has_labels")]
        require_modalities(train + val_used, cfg.data.modalities)
        return train, [CaseView(c, channels) for c in val_used]
    train, val = split_cases(cases, cfg.data.n_val, cfg.train.seed)
    require_modalities(train + val, cfg.data.modalities)
    return train, [CaseView(c, channels) for c in val]


def split_cases(cases: Sequence[Any], n_val: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(training cases, validation cases) among the labelled cases: ``n_val`` held out at random
    by ``glioseg.train.data.case_split`` (same ids and seed, same split); at least one case is
    kept for training."""
    from glioseg.train.data import case_split

    labelled = {c.case_id: c for c in cases if c.meta.get("has_labels")}
    if not labelled:
        where = f"{cases[0].path.parent}: " if cases and hasattr(cases[0], "path") else ""
        raise TrainError(f"{where}the cache has no case with labels (none of its {len(cases)} "
                         f"cases had a segmentation file): nothing to train on; "
                         f"{UNLABELLED_HINT}")
    n_val = max(0, min(n_val, len(labelled) - 1))
    train_ids, val_ids = case_split(list(labelled), n_val, seed)
    return [labelled[i] for i in train_ids], [labelled[i] for i in val_ids]


def loader_seed(seed: int, step: int) -> int:
    """Seed of the patch stream from ``step`` on (the loader mixes in the rank and worker): a
    resumed run draws fresh, reproducible patches instead of replaying those already seen."""
    if step == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_train_loader(cfg: C.Config, cases: Sequence[Any], info: D.DistInfo, step: int) -> Any:
    """The patch loader of this rank (``glioseg.train.data.make_loader``), endless; pinned
    memory on GPU; augmentation in the workers or on the device (``data.augment_device``)."""
    from glioseg.train.augment import AugmentConfig
    from glioseg.train.data import augment_on, make_loader

    d = cfg.data
    augment = (AugmentConfig.from_switches(flip=d.aug_flip, rotate_scale=d.aug_rotate_scale,
                                           intensity=d.aug_intensity, noise=d.aug_noise,
                                           elastic=d.aug_elastic)
               if d.augment else None)
    return make_loader(
        cases, patch_size=cfg.patch_size, batch_size=d.batch_size,
        seed=loader_seed(cfg.train.seed, step), rank=info.rank, world_size=info.world_size,
        num_workers=d.workers, oversample_fg=d.foreground_fraction, augment_cfg=augment,
        batches_per_epoch=None, pin_memory=info.device.type == "cuda", border=d.border,
        augment_on=augment_on(d.augment_device, info.device),
    )


def forever(loader: Any) -> Iterator[Any]:
    """Items of ``loader``, epoch after epoch."""
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:
            raise TrainError("the training loader yielded no batch")


# --------------------------------------------------------------------------- logging

class MetricsLog:
    """``metrics.jsonl`` (rank 0): one JSON line per record, flushed at once; on resume the
    records after the checkpoint's step are dropped so the file continues where it stopped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            if path.exists():
                path.unlink()
        elif path.exists():
            keep = [r for r in parse_metrics(path) if r.get("step", 0) <= resume_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
        self._f = open(path, "a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def parse_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file. The file is appended line by line, so a run
    killed mid-write can leave its last line torn: that line is dropped; a bad line before the
    last is an error naming the file and line (``records.read_jsonl(strict=True)``)."""
    try:
        return read_jsonl(path, strict=True)
    except RecordsError as e:
        raise TrainError(str(e)) from None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise TrainError(f"{run_dir}: no metrics.jsonl (not a training run folder?)")
    return parse_metrics(path)


class Logger:
    """metrics.jsonl + TensorBoard on rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path, info: D.DistInfo, resume_step: int | None) -> None:
        self.active = info.is_main
        self.metrics: MetricsLog | None = None
        self.tb: Any = None
        if self.active:
            self.metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=(resume_step or 0) + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        assert self.metrics is not None
        self.metrics.write(record)
        split = record.get("split", "train")
        for k, v in record.items():
            if k not in ("step", "split") and isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            assert self.metrics is not None
            self.metrics.close()
            self.tb.close()


# --------------------------------------------------------------------------- the run

def _model_card(cfg: C.Config, comp: Components, step: int, metrics: Mapping[str, Any],
                cases: Sequence[Any]) -> Any:
    """The model card of a checkpoint (``glioseg.model.card.ModelCard``)."""
    from glioseg.data.labels import SCHEMES
    from glioseg.model.card import ModelCard, cache_orientation

    layout = cases[0].meta.get("layout") if cases else None
    dice = {r: metrics[f"dice_{r}"] for r in ("WT", "TC", "ET") if f"dice_{r}" in metrics}
    provenance: dict[str, Any] = {"source": "trained"}
    extra: dict[str, Any] = {}
    if cfg.train.task == "genesis":
        provenance = {"source": "self-supervised", "method": "models-genesis",
                      "note": "restoration head; fine-tune to segment (glioseg finetune)"}
        extra["regions"] = tuple(f"restore_{m}" for m in cfg.data.modalities)
    if cfg.transfer.init_from:
        provenance = {"source": "fine-tuned", "init_from": cfg.transfer.init_from,
                      "strategy": cfg.transfer.strategy}
    return ModelCard.for_model(
        comp.model,
        modalities=tuple(cfg.data.modalities),
        **extra,
        label_scheme=layout if layout in SCHEMES else "brats2023",
        preprocessing={"spacing": _cache_spacing(cfg.data.cache_dir),
                       "normalisation": "zscore-brain",
                       "orientation": cache_orientation(cfg.data.cache_dir)},
        training={"steps": step, "data": cfg.data.cache_dir, "seed": cfg.train.seed,
                  "config": C.config_to_dict(cfg)},
        metrics={"dice": dice, "step": metrics.get("step", step)} if dice else {},
        provenance=provenance,
    )


def _cache_spacing(cache_dir: str) -> Any:
    """The voxel size (mm, 3 floats) the model learns at, for its card: the cache's resampling
    spacing, else the one spacing all its cases share (data already at e.g. 2 mm), so that
    prediction resamples other data to it; None when the cases differ (native grids)."""
    try:
        from glioseg.preprocess.cache import open_cache, read_dataset_json

        spacing = read_dataset_json(Path(cache_dir)).get("spacing")
        if spacing is not None:
            return spacing
        found = {tuple(round(float(v), 3) for v in c.meta["spacing"])
                 for c in open_cache(cache_dir, validate=False)}
    except (ValueError, OSError, KeyError, TypeError):
        return None
    return list(found.pop()) if len(found) == 1 else None


@dataclass
class RunState:
    step: int = 0
    best_metric: float = -math.inf
    best_step: int = 0
    elapsed_s: float = 0.0


def _save(run_dir: Path, cfg: C.Config, comp: Components, info: D.DistInfo, rs: RunState,
          best: bool, metrics: Mapping[str, Any], cases: Sequence[Any]) -> None:
    """Gather every rank's RNG state; rank 0 writes last.pt (and best.pt) and model cards."""
    rngs = D.all_gather_objects(ckpt.rng_state())
    if not info.is_main:
        return
    state = ckpt.training_state(
        step=rs.step, model=comp.model, optimizer=comp.optimizer, scheduler=comp.scheduler,
        scaler=comp.scaler, config=C.config_to_dict(cfg), rng=rngs,
        best={"metric": rs.best_metric, "step": rs.best_step},
        extra={"elapsed_s": rs.elapsed_s},
    )
    if best:
        ckpt.save_best(run_dir, state)
        ckpt.save_model_card(run_dir / "best", comp.model, _model_card(cfg, comp, rs.step, metrics, cases))
    ckpt.save_last(run_dir, state)
    ckpt.save_model_card(run_dir / "last", comp.model, _model_card(cfg, comp, rs.step, metrics, cases))


def _choose_checkpoint(run_dir: Path, info: D.DistInfo) -> ckpt.ResumeChoice | None:
    """Rank 0 chooses the checkpoint (``checkpoint.choose_resume``) and broadcasts its name and
    step; every other rank loads that file and checks its step. Ranks never choose on their
    own: on shared storage they could see different files and resume at different steps. Any
    rank's failure (an unreadable file, another step) is an error on every rank, not a hang."""
    mine: ckpt.ResumeChoice | None = None
    decision: dict[str, Any] = {"error": None, "name": None, "step": None, "notes": []}
    if info.is_main:
        try:
            mine = ckpt.choose_resume(run_dir)
        except ckpt.CheckpointError as exc:
            decision["error"] = str(exc)
        if mine is not None:
            decision.update(name=mine.path.name, step=mine.step, notes=mine.notes)
    decision = D.broadcast_object(decision)
    if decision["error"]:
        raise TrainError(decision["error"])
    if decision["name"] is None:
        return None
    problem = None
    if not info.is_main:
        path = run_dir / decision["name"]
        try:
            state = ckpt.load_usable(path)
            mine = ckpt.ResumeChoice(path, state, decision["notes"])
            if mine.step != decision["step"]:
                problem = f"{path} holds step {mine.step}"
        except ckpt.CheckpointError as exc:
            problem = str(exc)
    problems = [(r, p) for r, p in enumerate(D.all_gather_objects(problem)) if p]
    if problems:
        raise TrainError(
            f"{run_dir}: rank 0 resumes from {decision['name']} at step {decision['step']} but "
            + "; ".join(f"rank {r}: {p}" for r, p in problems)
            + " (do all nodes see the same run folder?)")
    return mine


def _resume_point(run_dir: Path, cfg: C.Config, resume: bool,
                  info: D.DistInfo | None = None) -> dict[str, Any] | None:
    """The training state to resume from (the same file on every rank, see
    ``_choose_checkpoint``), or None to start afresh. The state's ``"resume"`` entry says what
    to report: the file, checkpoints passed over, config keys that changed."""
    choice = _choose_checkpoint(run_dir, info or D.DistInfo())
    if choice is None:
        if resume:
            raise TrainError(f"{run_dir}: --resume given but there is no readable last.pt or "
                             "previous.pt to resume from")
        return None
    state, path = choice.state, choice.path
    current = C.config_to_dict(cfg)
    diffs = config_differences(state["config"], current)
    if diffs:
        raise TrainError(f"{run_dir}: holds a run ({path.name}, step {state['step']}) with another "
                         f"config ({'; '.join(diffs[:3])}); use another --out, or --resume "
                         "without --config to continue it")
    state["resume"] = {"checkpoint": path.name, "notes": choice.notes,
                       "changed": resume_changes(state["config"], current)}
    return state


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


def fit(cfg: C.Config, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; returns the final validation scores and step.

    Runs as one process or as one rank of a torchrun job (``glioseg.train.distributed``).
    Resumes from ``run_dir``'s checkpoint when there is one with a matching config;
    ``resume=True`` makes a missing checkpoint an error.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    info = D.init(cfg.train.device, cfg.train.threads)
    live: dict[str, Any] = {}
    ok = False
    try:
        summary = _run(cfg, run_dir, info, resume, live)
        if info.is_main:  # hardware.json, timings.json (glioseg.runinfo)
            record_training(run_dir, cfg, time.perf_counter() - started, summary)
        ok = True
        return summary
    finally:
        D.shutdown(live, clean=ok)


def _run(cfg: C.Config, run_dir: Path, info: D.DistInfo, resume: bool,
         live: dict[str, Any]) -> dict[str, Any]:
    from glioseg.preprocess.cache import open_cache

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    cases = open_cache(cfg.data.cache_dir)
    val_pool = open_cache(cfg.data.val_cache) if cfg.data.val_cache else None
    train_cases, val_cases = select_cases(cfg, cases, val_pool)
    state = _resume_point(run_dir, cfg, resume, info)
    resumed = state.pop("resume") if state is not None else None
    if resumed is not None and info.is_main:
        for note in resumed["notes"]:
            tqdm.write(f"warning: {note}")
        tqdm.write(f"resuming {run_dir} from step {state['step']}")
        for key, (old, new) in resumed["changed"].items():
            tqdm.write(f"resume: {key} changed: {old!r} -> {new!r}")

    comp = build_components(cfg, info, fresh=state is None)
    if comp.load_report is not None and info.is_main:
        write_load_report(run_dir, cfg, comp)
    rs = RunState()
    if state is not None:
        fresh_base_lrs = list(comp.scheduler.base_lrs)
        rs.step = ckpt.restore(state, model=comp.model, optimizer=comp.optimizer,
                               scheduler=comp.scheduler, scaler=comp.scaler, rank=info.rank)
        if resumed is not None and "optim.lr" in resumed["changed"]:
            apply_lr(comp, fresh_base_lrs)
        rs.best_metric = float(state["best"].get("metric", -math.inf))
        rs.best_step = int(state["best"].get("step", 0))
        rs.elapsed_s = float(state["extra"].get("elapsed_s", 0.0))
        del state
    else:
        D.seed_everything(cfg.train.seed + info.rank)
    wrap(comp, cfg, info)
    live["comp"] = comp
    if info.is_main:
        C.dump_config(cfg, run_dir / "config.yaml")

    logger = Logger(run_dir, info, rs.step if rs.step > 0 else None)
    live["logger"] = logger
    if resumed is not None:  # what the resume did, in the run's own log
        logger.log({"step": rs.step, "split": "resume", **resumed})
    try:
        last_val = _train(cfg, run_dir, info, comp, rs, train_cases, val_cases, logger)
    finally:
        logger.close()
    return {"step": rs.step, "best_metric": rs.best_metric, "best_step": rs.best_step,
            "rank": info.rank, "val_pipeline": validation_pipeline(cfg), **last_val}


def validation_pipeline(cfg: C.Config) -> str:
    """How validation predicts, in words: ``whole volume`` (one forward of the cropped box, as
    ``glioseg predict``'s default ``--mode auto`` does when it fits in memory) or the windows
    (``predict --mode sliding --roi .. --overlap ..`` repeats them)."""
    if cfg.train.val_mode == "whole":
        return "whole volume"
    roi = ",".join(str(int(v)) for v in cfg.patch_size)
    return f"sliding windows {roi}, overlap {cfg.train.val_overlap:g}"


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


def genesis_batch(batch: L.Batch, seed: int, rank: int, step: int,
                  channels_last: bool = False) -> L.Batch:
    """The Models Genesis pair of a batch: the corrupted patches as input and the original
    patches as target (``glioseg.transfer.genesis``); the corruption is drawn from a generator
    seeded by (seed, rank, step), so a resumed run draws the same ones."""
    import numpy as np

    from glioseg.transfer.genesis import corrupt_batch

    rng = np.random.default_rng([seed, rank, step])
    original = batch.image.float()
    corrupted = torch.from_numpy(corrupt_batch(original.cpu().numpy(), rng)).to(original.device)
    return L.Batch(corrupted.contiguous(memory_format=L.memory_format(channels_last)), original)


def _train(cfg: C.Config, run_dir: Path, info: D.DistInfo, comp: Components, rs: RunState,
           train_cases: list[Any], val_cases: list[Any], logger: Logger) -> dict[str, Any]:
    t = cfg.train
    if rs.step >= t.steps:
        return {}
    genesis = t.task == "genesis"
    channels = channel_indices(cfg.data.modalities)
    loader_cfg = cfg
    if genesis:  # no labels: uniform patches, no foreground oversampling
        import dataclasses

        loader_cfg = C.replace(cfg, data=dataclasses.replace(cfg.data, foreground_fraction=0.0))
    loader = make_train_loader(loader_cfg, train_cases, info, rs.step)
    batches = forever(loader)
    bar = tqdm(total=t.steps, initial=rs.step, disable=not info.is_main, desc="train",
               dynamic_ncols=True, unit="step")
    window = {"loss": 0.0, "n": 0, "patches": 0, "wait": 0.0, "skipped": 0,
              "t0": time.perf_counter()}
    skips_in_a_row = 0
    last_val: dict[str, Any] = {}
    t_start = time.perf_counter()
    elapsed0 = rs.elapsed_s
    while rs.step < t.steps:
        t0 = time.perf_counter()
        micro = [L.to_batch(next(batches), info.device, t.channels_last)
                 for _ in range(t.grad_accum)]
        if channels != list(range(micro[0].image.shape[1])):
            micro = [L.Batch(mb.image[:, channels], mb.target) for mb in micro]
        if genesis:
            micro = [genesis_batch(mb, t.seed, info.rank, rs.step * t.grad_accum + i,
                                   t.channels_last) for i, mb in enumerate(micro)]
        window["wait"] += time.perf_counter() - t0
        res = L.train_step(comp.net, micro, comp.loss_fn, comp.optimizer, comp.scaler, t.amp,
                           cfg.optim.grad_clip)
        skips_in_a_row = skips_in_a_row + 1 if res.skipped else 0
        if res.skipped:  # the weights are unchanged (L.train_step); the step still counts
            window["skipped"] += 1
            if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                raise TrainError(
                    f"step {rs.step + 1}: the gradient was not finite at {skips_in_a_row} steps "
                    f"in a row (loss {res.loss}); the checkpoints in {run_dir} hold finite "
                    "weights: resume with a lower learning rate (--resume --set optim.lr=...) "
                    "or another precision (--set train.amp=none)")
            if info.is_main and not comp.scaler.is_enabled():  # fp16's scaler skips by design
                bar.write(f"step {rs.step + 1}: gradient norm {res.grad_norm} (loss "
                          f"{res.loss}): update skipped")
        comp.scheduler.step()
        rs.step += 1
        rs.elapsed_s = elapsed0 + time.perf_counter() - t_start
        if math.isfinite(res.loss):  # a skipped step's loss would poison the mean
            window["loss"] += res.loss
            window["n"] += 1
        window["patches"] += res.patches
        bar.update(1)
        if rs.step % t.log_every == 0 or rs.step == t.steps:
            rec = _train_record(window, rs, comp, info)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", pps=f"{rec['patches_per_s']:.2f}")
            logger.log(rec)
            window = {"loss": 0.0, "n": 0, "patches": 0, "wait": 0.0, "skipped": 0,
                      "t0": time.perf_counter()}
        best = False
        t_pause = time.perf_counter()
        if val_cases and (rs.step % t.val_every == 0 or rs.step == t.steps):
            last_val = L.validate(comp.model, val_cases, device=info.device, rank=info.rank,
                                  world_size=info.world_size, mode=t.val_mode,
                                  roi=cfg.patch_size, overlap=t.val_overlap, amp=t.amp,
                                  divisor=comp.divisor, channels_last=t.channels_last)
            if last_val["dice_mean"] > rs.best_metric:
                rs.best_metric, rs.best_step, best = last_val["dice_mean"], rs.step, True
            last_val = {"step": rs.step, **last_val}
            logger.log({"split": "val", **last_val,
                        "elapsed_s": round(rs.elapsed_s, 2)})
            if info.is_main:
                bar.write(f"step {rs.step}: val Dice WT {last_val['dice_WT']:.3f} "
                          f"TC {last_val['dice_TC']:.3f} ET {last_val['dice_ET']:.3f}")
        if best or rs.step % t.ckpt_every == 0 or rs.step == t.steps:
            _save(run_dir, cfg, comp, info, rs, best, last_val, train_cases)
        window["t0"] += time.perf_counter() - t_pause  # not in the throughput window
    bar.close()
    return last_val


def _train_record(window: dict[str, float], rs: RunState, comp: Components,
                  info: D.DistInfo) -> dict[str, Any]:
    """Mean loss over the window and ranks (over the steps with a finite loss; nan when there
    were none); patches/s over all ranks; data-wait fraction; steps skipped in the window
    (non-finite gradient: the same steps on every rank)."""
    dt = max(time.perf_counter() - window["t0"], 1e-9)
    loss = window["loss"] / window["n"] if window["n"] else math.nan
    stats = torch.tensor([loss, window["wait"] / dt, window["patches"] / dt],
                         dtype=torch.float64)
    if D.is_initialized():
        stats = stats.to(D.collective_device())
        D.all_reduce_sum(stats)
        stats = stats.cpu()
        stats[:2] /= info.world_size
    return {"step": rs.step, "split": "train", "loss": float(stats[0]),
            "lr": float(comp.optimizer.param_groups[0]["lr"]),
            "patches_per_s": float(stats[2]), "data_wait": float(stats[1]),
            "skipped_steps": int(window["skipped"]), "elapsed_s": round(rs.elapsed_s, 2)}


# --------------------------------------------------------------------------- launching

def is_cache(path: str | Path) -> bool:
    """Whether ``path`` is a preprocessed cache (has ``dataset.json``)."""
    return (Path(path) / "dataset.json").is_file()


def prepare_data(data: str | Path, run_dir: str | Path, spacing: float | None = None,
                 workers: int = 1, wait_s: float = 7200.0,
                 modalities: Sequence[str] | None = None) -> Path:
    """The cache to train on: ``data`` itself when it is a cache, else ``RUN_DIR/cache``
    built from the raw data folder (``glioseg.preprocess.run.preprocess_dir``; resumable).
    ``modalities``: the sequences the cases must have (a site with fewer sequences); None
    needs all four.

    Under torchrun only rank 0 preprocesses; the other ranks wait for its ``dataset.json``.
    """
    data, run_dir = Path(data), Path(run_dir)
    if is_cache(data):
        return data
    if not data.exists():
        raise TrainError(f"--data {data}: no such folder")
    cache = run_dir / "cache"
    rank = D.env_ranks()[0]
    if rank == 0:
        from glioseg.preprocess.run import preprocess_dir

        run_dir.mkdir(parents=True, exist_ok=True)
        preprocess_dir(data, cache, spacing=spacing, workers=workers, modalities=modalities)
        return cache
    t0 = time.monotonic()
    while not is_cache(cache):
        if time.monotonic() - t0 > wait_s:
            raise TrainError(f"{cache}: rank {rank} waited {wait_s:.0f} s for rank 0 to "
                             "preprocess the data")
        time.sleep(2.0)
    return cache


def data_modalities(data: str | Path) -> tuple[list[str], str]:
    """The sequences ``data`` offers, canonical names in ``MODALITIES`` order, and where they
    were read (for messages): for a cache, its ``dataset.json`` ``selected_modalities`` (all
    four for older caches) less any a cached case lacks; for a raw data folder, the sequences
    every case has a file for.

    Raises:
        TrainError: no such folder, or no sequence common to every case.
    """
    from glioseg.data.labels import MODALITIES

    data = Path(data)
    if is_cache(data):
        from glioseg.preprocess.cache import open_cache, read_dataset_json

        have = set(read_dataset_json(data).get("selected_modalities", MODALITIES))
        for case in open_cache(data, validate=False):
            have &= set(case.modalities)
        where = f"{data / 'dataset.json'} selected_modalities"
    else:
        if not data.exists():
            raise TrainError(f"--data {data}: no such folder")
        from glioseg.data.cases import discover

        have = set(MODALITIES)
        for case in discover(data):
            have &= set(case.images)
        where = f"the sequences every case of {data} has"
    found = [m for m in MODALITIES if m in have]
    if not found:
        raise TrainError(f"--data {data}: no sequence is common to every case ({where}); "
                         "name the ones to use with --modalities")
    return found, where


def finetune_modalities(source: Sequence[str], available: Sequence[str]) -> list[str]:
    """The sequences a fine-tuning run takes when none are named: the source model's, in its
    order, when the data has every one of them (its first layer is then loaded unchanged);
    otherwise the data's own ``available`` ones, onto which the source's input filters are
    adapted by name (``glioseg.model.weights.adapt_input_filters``)."""
    if set(source) <= set(available):
        return list(source)
    return list(available)


def torchrun_command(
    train_args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    run_id: str = "glioseg",
) -> list[str]:
    """The command that runs ``glioseg train <train_args>`` as ``nproc`` workers per node under
    torchrun (``python -m torch.distributed.run``): standalone on one node, c10d rendezvous at
    ``rdzv_endpoint`` across ``nnodes`` nodes. ``--max-restarts`` restarts crashed workers,
    which resume from the run folder's last checkpoint."""
    import sys

    if nproc < 1 or nnodes < 1:
        raise TrainError(f"--nproc ({nproc}) and --nnodes ({nnodes}) must be >= 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise TrainError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (a node all reach)")
        if not 0 <= node_rank < nnodes:
            raise TrainError(f"--node-rank {node_rank} is not in [0, {nnodes})")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={run_id}"]
    return [*cmd, "-m", "glioseg", "train", *train_args]


def torchrun_env(nnodes: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of ``torchrun_command``: across several nodes, a fresh rendezvous store
    per round (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), so that workers restarted by
    ``--max-restarts`` never read a dead peer's address from the previous round (one node
    separates the rounds itself: ``glioseg.train.distributed``)."""
    import os

    env = dict(os.environ if base is None else base)
    if nnodes > 1:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env

"""The training configuration's schema: one typed, frozen dataclass per section and the
checks of their values.

Every default is here, with a line on why; ``glioseg.train.config`` loads YAML files and
``a.b=v`` overrides into these classes (and re-exports them, so importers use that module).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from glioseg.data.labels import MODALITIES
from glioseg.errors import GliosegError
from glioseg.model.registry import ModelConfig


class ConfigError(GliosegError, ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """Where the training patches come from and how they are drawn."""

    cache_dir: str = ""
    """Preprocessed cache (``glioseg preprocess``); set by ``glioseg train --data``."""
    patch_size: tuple[int, int, int] | None = None
    """Patch ``(X, Y, Z)`` in voxels, each divisible by the model's divisor; None takes
    ``model.patch_size``. When set it also becomes ``model.patch_size`` (the card's default
    sliding-window ROI), so the two never disagree in a resolved config."""
    batch_size: int = 2
    """Patches per step per process (the global batch is ``batch_size x world x grad_accum``)."""
    workers: int = 1
    """Loader worker processes per training process (0: load in the training process)."""
    foreground_fraction: float = 0.33
    """Share of patches centred on a tumour voxel (nnU-Net's 1/3 oversampling)."""
    border: float = 0.5
    """How far a patch may reach beyond a case's cropped volume (zero-filled), as a fraction
    of the patch per face, in [0, 0.5]. 0 keeps patches inside the brain's box (nnU-Net);
    0.5 also shows the network windows that are up to half background, as a sliding window
    over an uncropped volume has, so its output hardly depends on where the windows fall:
    small preset, 600 steps, 6 cases at 1 mm, MONAI's sliding window on the uncropped volume
    agreed with our cropped one at WT Dice 0.72 after training with 0 and 0.99 with 0.5, at
    the same accuracy of our own prediction."""
    augment: bool = True
    """Master switch for augmentation; the switches below apply only when it is on."""
    aug_flip: bool = True
    """Random mirroring along each axis (BraTS brains are nearly symmetric)."""
    aug_rotate_scale: bool = True
    """Random small rotation and isotropic scaling (one resampling of the patch)."""
    aug_intensity: bool = True
    """Per-modality random brightness, contrast and gamma (scanner variation)."""
    aug_noise: bool = True
    """Gaussian noise and blur (acquisition quality)."""
    aug_elastic: bool = False
    """Smooth elastic deformation (probability 0.2 when on); off by default, as in nnU-Net
    v2, where it cost time for no measured gain."""
    augment_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the augmentation runs. ``cpu``: in the loader workers (each builds augmented
    batches). ``cuda``: the workers only crop patches and the same transforms, drawn the same
    way, run batched on the GPU after the batch is moved there (``glioseg.train.augment_batched``),
    so fewer CPU workers keep a fast step fed. ``auto``: ``cuda`` when training on a GPU,
    else ``cpu``."""
    n_val: int = 2
    """Labelled cases held out at random (seeded by ``train.seed``) for validation."""
    modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
    """Input sequences by name, in input-channel order (any subset of t1, t1ce, t2, flair):
    taken from the cache by name; ``model.in_channels`` follows its length."""
    cases: tuple[str, ...] = ()
    """Case ids of the cache to train on (empty: every labelled case); with ``n_val`` some of
    them are held out unless ``val_cache`` is given."""
    val_cache: str = ""
    """Validate on every labelled case of this other cache (e.g. a held-out test site) instead
    of holding cases out of ``cache_dir``."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: Literal["adamw", "sgd"] = "adamw"
    """AdamW converges fast on few steps; SGD with Nesterov momentum 0.99 is nnU-Net's choice
    for long runs."""
    lr: float = 1e-3
    """Peak learning rate (after warmup); 1e-3 suits AdamW, 1e-2 suits SGD."""
    weight_decay: float = 1e-5
    """Decoupled weight decay (AdamW) or L2 (SGD); small, as in nnU-Net (3e-5)."""
    momentum: float = 0.99
    """SGD momentum (Nesterov); ignored by AdamW."""
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    """Decay after warmup: nnU-Net's poly (exponent 0.9), cosine, or constant."""
    warmup_steps: int = 50
    """Linear warmup from 0 to ``lr`` over these steps (stabilises the first AdamW steps)."""
    grad_clip: float = 12.0
    """Gradient norm clip (nnU-Net's 12); 0 disables."""


@dataclass(frozen=True)
class LossConfig:
    """The segmentation loss: soft Dice + BCE over the WT/TC/ET regions (``train.task:
    segment``), summed over the deep-supervision scales (``glioseg.train.losses``)."""

    dice_weight: float = 1.0
    """Weight of the soft Dice term."""
    bce_weight: float = 1.0
    """Weight of the binary cross-entropy term."""
    batch_dice: bool = False
    """Soft Dice over the whole batch as one volume per region (nnU-Net's batch Dice; steadier
    with small lesions and large batches) instead of per sample."""
    target_downsampling: Literal["nearest", "maxpool"] = "nearest"
    """How the region targets are brought to the coarser deep-supervision scales: one voxel
    per block (nnU-Net) or ``maxpool`` (a coarse voxel is set when any of its block is, so small
    lesions never vanish from the coarse targets)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    """Optimiser steps in total (a step sees ``batch_size x grad_accum`` patches per process)."""
    val_every: int = 100
    """Validate on the held-out cases every this many steps (and at the last step)."""
    ckpt_every: int = 100
    """Write ``last.pt`` every this many steps (and at the last step)."""
    log_every: int = 10
    """Append the mean training loss to ``metrics.jsonl`` every this many steps."""
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    """Autocast dtype: bf16 needs no loss scaling and is fast on CPUs with AVX-512 BF16 / AMX;
    fp16 always trains with a GradScaler; none for float32. auto: on a GPU the faster of fp16
    and bf16 in a short timed probe of the run's own step (``glioseg.train.device_policy``;
    a precision whose probe gives a non-finite loss is ruled out); on a CPU bf16 where it is
    native, else float32 (bf16 is emulated there and measured 50x slower)."""
    compile: bool | Literal["auto"] = False
    """``torch.compile`` the model (on CPU it needs a C++ compiler and minutes). auto: on a GPU
    for runs of at least ``device_policy.COMPILE_MIN_STEPS`` steps (compiling costs a minute
    or more), never on a CPU."""
    channels_last: bool | Literal["auto"] = True
    """``channels_last_3d`` memory format (oneDNN's and cuDNN's preferred layout for some
    convolutions, not all: measured 23% slower for the full preset with cuDNN on an H200).
    auto: on a GPU timed against the default layout in the same probe as ``amp``; on a CPU
    channels_last (this option's default)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step (a larger batch without more memory)."""
    seed: int = 0
    """Seed of every generator (model init, sampling, augmentation); rank r adds r."""
    val_mode: Literal["whole", "sliding"] = "whole"
    """Validation forward: the whole cropped volume at once (padded to the model's divisor;
    fast for 2 mm volumes) or a sliding window of ``patch_size`` (1 mm volumes)."""
    val_overlap: float = 0.25
    """Sliding-window overlap for ``val_mode: sliding``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available, else CPU."""
    threads: int = 0
    """CPU threads per process (0: torch's default, divided among the processes of a node)."""
    task: Literal["segment", "genesis"] = "segment"
    """``segment``: supervised WT/TC/ET segmentation. ``genesis``: self-supervised Models
    Genesis restoration of corrupted patches (labels unused; the model outputs one channel per
    input sequence; ``glioseg pretrain``)."""


@dataclass(frozen=True)
class TransferConfig:
    """Start from a pretrained model (``glioseg finetune``) and choose what trains."""

    init_from: str = ""
    """Model folder (``RUN/best``, ``RUN/last``, an imported checkpoint), ``.safetensors`` or
    ``card.json`` to load before the first step; empty: train from scratch."""
    strategy: Literal["full", "frozen-encoder", "gradual", "discriminative"] = "full"
    """``full``: everything trains; ``frozen-encoder``: decoder and heads train;
    ``gradual``: the head first, one more stage towards the input at regular steps;
    ``discriminative``: full with layer-wise learning rates (``glioseg.transfer.freeze``)."""
    layer_decay: float = 0.0
    """Learning-rate factor per stage from the head towards the input (0: the strategy's
    default, 0.7 for discriminative, 1 otherwise)."""
    train_norms: bool = True
    """Normalisation affine parameters train even in frozen stages (cheap site adaptation)."""
    new_head: bool = False
    """Start the output heads from a fresh initialisation even when the source's fit."""


def _default_model() -> ModelConfig:
    return ModelConfig()


@dataclass(frozen=True)
class Config:
    """The whole training configuration; ``model`` is the model engineer's ``ModelConfig``
    (its ``deep_supervision`` switch is the training stage's deep supervision)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=_default_model)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        # The input channels follow data.modalities; a restoration model outputs one channel
        # per input sequence and has no deep-supervision heads.
        want = {"in_channels": len(self.data.modalities)}
        if self.train.task == "genesis":
            want.update(out_channels=len(self.data.modalities), deep_supervision=False)
        if any(getattr(self.model, k) != v for k, v in want.items()):
            object.__setattr__(self, "model", dataclasses.replace(self.model, **want))
        # One patch size: data.patch_size wins when given, else the model's.
        if self.data.patch_size is None:
            object.__setattr__(self, "data",
                               dataclasses.replace(self.data, patch_size=self.model.patch_size))
        elif tuple(self.data.patch_size) != tuple(self.model.patch_size):
            object.__setattr__(self, "model",
                               dataclasses.replace(self.model, patch_size=self.data.patch_size))
        _validate(self)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The training patch ``(X, Y, Z)``."""
        assert self.data.patch_size is not None
        return tuple(self.data.patch_size)  # type: ignore[return-value]


def _validate(cfg: Config) -> None:
    d, o, t = cfg.data, cfg.optim, cfg.train
    checks = [
        (all(p > 0 for p in cfg.patch_size), "data.patch_size", "must be positive"),
        (d.batch_size >= 1, "data.batch_size", "must be >= 1"),
        (d.workers >= 0, "data.workers", "must be >= 0"),
        (0.0 <= d.foreground_fraction <= 1.0, "data.foreground_fraction", "must be in [0, 1]"),
        (d.n_val >= 0, "data.n_val", "must be >= 0"),
        (o.lr > 0, "optim.lr", "must be > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0"),
        (o.grad_clip >= 0, "optim.grad_clip", "must be >= 0"),
        (t.steps >= 1, "train.steps", "must be >= 1"),
        (t.val_every >= 1, "train.val_every", "must be >= 1"),
        (t.ckpt_every >= 1, "train.ckpt_every", "must be >= 1"),
        (t.log_every >= 1, "train.log_every", "must be >= 1"),
        (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
        (0.0 <= t.val_overlap < 1.0, "train.val_overlap", "must be in [0, 1)"),
        (t.threads >= 0, "train.threads", "must be >= 0"),
        (len(d.modalities) >= 1, "data.modalities", "must name at least one sequence"),
        (set(d.modalities) <= set(MODALITIES), "data.modalities",
         f"must be names among {', '.join(MODALITIES)}"),
        (len(set(d.modalities)) == len(d.modalities), "data.modalities", "has a repeated name"),
        (0.0 <= cfg.transfer.layer_decay <= 1.0, "transfer.layer_decay", "must be in [0, 1]"),
        (cfg.loss.dice_weight >= 0 and cfg.loss.bce_weight >= 0
         and cfg.loss.dice_weight + cfg.loss.bce_weight > 0, "loss.dice_weight",
         "and loss.bce_weight must be >= 0, not both 0"),
    ]
    for ok, key, what in checks:
        if not ok:
            raise ConfigError(f"{key}: {what} (got {_get(cfg, key)!r})")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg

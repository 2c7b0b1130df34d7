"""The pieces of a training step and of validation, as small functions of live objects.

``fit.py`` strings them together; the benchmark and the profiler call the same functions, so
the figures they print are the figures of training.

Tensor layouts: images ``(B, 4, X, Y, Z)`` float32, region targets ``(B, 3, X, Y, Z)`` float
(channels WT, TC, ET), logits ``(B, 3, X, Y, Z)`` (a list, finest first, with deep supervision).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glioseg.data.labels import REGIONS, region_masks, regions_from_labels
from glioseg.errors import InputError

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
"""``loss_fn(logits or list of logits, targets (B, 3, X, Y, Z)) -> scalar``."""


# --------------------------------------------------------------------------- precision

def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
    it, measured 50-70x slower than float32 on an AVX2-only 2-core EPYC (1 vs 60 GFLOP/s)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_warned_bf16 = False


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision ``amp`` (``auto``, ``bf16``, ``fp16``, ``none``) means on ``device``.

    ``auto``: bf16 on a GPU that has it (else fp16) and on a CPU with native bf16, float32
    (``none``) on other CPUs. An explicit ``bf16`` on a CPU without native support is honoured
    (the user asked for it; ``glioseg bench train`` shows the cost) with a warning.
    """
    global _warned_bf16
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise InputError(f"train.amp={amp!r} is not auto, bf16, fp16 or none")
    cuda = device.type == "cuda"
    if amp == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if native_bf16_cpu() else "none"
    if amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise InputError("train.amp=bf16: this GPU has no bf16 support; use fp16 or auto")
        if not cuda and not native_bf16_cpu() and not _warned_bf16:
            _warned_bf16 = True
            warnings.warn("bf16 on a CPU without AVX-512 BF16 / AMX is emulated and much slower "
                          "than float32; train.amp=auto picks float32 here", stacklevel=2)
    return amp


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (see ``resolve_amp``) on ``device``, or None (float32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[resolve_amp(amp, device)]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` on ``device`` (a null context for ``none``)."""
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=(resolve_amp(amp, device) == "fp16"))


def memory_format(channels_last: bool | str) -> torch.memory_format:
    """``channels_last_3d`` or the default layout; ``auto`` must have been resolved for the
    device first (``glioseg.train.device_policy.choose_for_run``)."""
    if channels_last == "auto":
        raise InputError("train.channels_last=auto is resolved per device before the model is "
                         "built (glioseg.train.device_policy.choose_for_run)")
    return torch.channels_last_3d if channels_last else torch.contiguous_format


# --------------------------------------------------------------------------- batches

@dataclass
class Batch:
    """One batch on the compute device.

    Attributes:
        image: ``(B, 4, X, Y, Z)`` float32.
        target: ``(B, 3, X, Y, Z)`` float32 region masks (WT, TC, ET).
    """

    image: torch.Tensor
    target: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


def regions_target(labels: torch.Tensor) -> torch.Tensor:
    """Internal labels ``(B, X, Y, Z)`` (or ``(B, 1, X, Y, Z)``) -> ``(B, 3, X, Y, Z)`` float
    region masks (``glioseg.data.labels.region_masks``: WT = label > 0, TC = label in {1, 3},
    ET = label == 3)."""
    if labels.ndim == 5:
        labels = labels[:, 0]
    return torch.stack(region_masks(labels), dim=1).float()


def to_batch(raw: Any, device: torch.device, channels_last: bool) -> Batch:
    """A loader item (a ``Batch``, a dict with ``image`` and ``labels``/``regions``, an
    ``(image, labels)`` pair, or ``glioseg.train.augment_batched.PatchBoxes``, augmented here after
    the move) moved to ``device`` (``non_blocking``: the loader pins memory on GPU runs)."""
    from glioseg.train.augment_batched import PatchBoxes, augment_boxes

    if isinstance(raw, PatchBoxes):
        image, target = augment_boxes(raw.to(device, non_blocking=device.type == "cuda"))
    elif isinstance(raw, Batch):
        image, target = raw.image, raw.target
    elif isinstance(raw, dict):
        image = raw["image"]
        if "regions" in raw:
            target = raw["regions"]
        elif "target" in raw:
            target = raw["target"]
        else:
            target = raw["labels"]
    else:
        image, target = raw
    non_blocking = device.type == "cuda"
    image = image.to(device, non_blocking=non_blocking)
    target = target.to(device, non_blocking=non_blocking)
    if target.dtype in (torch.uint8, torch.int64, torch.int32, torch.int16) and (
        target.ndim == 4 or (target.ndim == 5 and target.shape[1] == 1)
    ):
        target = regions_target(target)
    image = image.float().contiguous(memory_format=memory_format(channels_last))
    return Batch(image, target.float())


# --------------------------------------------------------------------------- the step

@dataclass
class StepResult:
    """What one optimiser step reports, as device tensors (reading one is a host sync: the
    training loop sums them on the device, ``glioseg.train.device_step.StepStats``, and reads
    them once per log; the float properties are for tests and one-off callers).

    Attributes:
        loss_t: 0-d float32, the mean loss over the step's micro-batches.
        grad_norm_t: 0-d, the gradient norm before clipping.
        patches: the patches the step saw on this process.
        skipped_t: 0-d bool, the update was skipped because the gradient was not finite (nan
            or inf; the weights and optimiser state are then unchanged).
    """

    loss_t: torch.Tensor
    grad_norm_t: torch.Tensor
    patches: int
    skipped_t: torch.Tensor

    @property
    def loss(self) -> float:
        return float(self.loss_t)

    @property
    def grad_norm(self) -> float:
        return float(self.grad_norm_t)

    @property
    def skipped(self) -> bool:
        return bool(self.skipped_t)


def _no_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for all but the last micro-batch of a step."""
    if not last and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    micro_batches: Sequence[Batch],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: str,
    grad_clip: float = 0.0,
    timer: StepTimer | None = None,
) -> StepResult:
    """Forward, backward over the micro-batches (gradient accumulation), then one optimiser step.

    The loss of each micro-batch is divided by their number, so the update equals that of one
    batch holding all of them (for per-sample losses averaged over the batch).

    A gradient whose norm (after unscaling, before clipping) is not finite skips the update,
    as a GradScaler does (which, for fp16, then lowers its scale): the weights and the
    optimiser state stay as they were and the result says ``skipped``. Nothing here reads a
    tensor back to the host: the decision is taken on the device
    (``glioseg.train.device_step.guarded_step``) and the loss, norm and flag are returned as
    device tensors. Under DDP the gradients are already averaged, so every rank takes the same
    decision. The GradScaler's own ``step`` is not called (it reads its overflow flag on the
    host for non-fused optimisers): ``unscale_`` records the overflow and ``update`` adjusts
    the scale from it on the device.
    """
    from glioseg.train.device_step import guarded_step

    device = micro_batches[0].image.device
    n = len(micro_batches)
    total = torch.zeros((), device=device)
    patches = 0
    for i, mb in enumerate(micro_batches):
        with _no_sync(model, last=(i == n - 1)):
            with _section(timer, "forward"), autocast(device, amp):
                logits = model(mb.image)
                loss = loss_fn(logits, mb.target)
            with _section(timer, "backward"):
                scaler.scale(loss / n).backward()
        total += loss.detach().float()
        patches += mb.size
    with _section(timer, "optimizer"):
        scaler.unscale_(optimizer)  # a no-op without fp16; records an overflow for update()
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None])
        bad = ~torch.isfinite(norm)
        guarded_step(optimizer, bad)
        scaler.update()  # fp16: lowers the scale after an overflow; a no-op otherwise
        optimizer.zero_grad(set_to_none=True)
    return StepResult(total / n, norm.detach(), patches, bad)


class StepTimer:
    """Wall time per section (data, forward, backward, optimizer), for the profile split.

    CUDA work is asynchronous; the timer synchronises at each boundary so the split is honest
    (only used by ``--profile`` and the benchmark, never by plain training).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.add(name, time.perf_counter() - t0)


def _section(timer: StepTimer | None, name: str) -> contextlib.AbstractContextManager:
    return timer.section(name) if timer is not None else contextlib.nullcontext()


# --------------------------------------------------------------------------- validation

def pad_to_multiple(image: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad ``(B, C, X, Y, Z)`` at the far end of each axis to a multiple of ``divisor``
    (cached images are 0 outside the brain, so zeros are background); return the original
    spatial shape for cropping back."""
    shape = tuple(int(s) for s in image.shape[2:])
    pads: list[int] = []
    for s in reversed(shape):
        pads += [0, (-s) % divisor]
    return F.pad(image, pads), shape


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    mode: str = "whole",
    roi: Sequence[int] = (64, 64, 64),
    overlap: float = 0.25,
    amp: str = "none",
    divisor: int = 1,
) -> torch.Tensor:
    """Region logits of a whole volume.

    Args:
        model: in eval mode.
        image: ``(1, 4, X, Y, Z)`` float32 on the model's device.
        mode: ``whole`` (one forward of the volume padded to ``divisor``) or ``sliding``
            (MONAI ``sliding_window_inference`` with ``roi`` windows, gaussian blending).

    Returns:
        ``(1, 3, X, Y, Z)`` float32 logits.
    """
    device = image.device
    with autocast(device, amp), _cudnn_benchmark(mode != "whole"):
        if mode == "whole":
            padded, shape = pad_to_multiple(image, divisor)
            out = model(padded)[..., : shape[0], : shape[1], : shape[2]]
        elif mode == "sliding":
            from monai.inferers import sliding_window_inference

            out = sliding_window_inference(image, roi_size=tuple(roi), sw_batch_size=1,
                                           predictor=model, overlap=overlap, mode="gaussian")
        else:
            raise InputError(f"validation mode {mode!r} is not whole or sliding")
    return out.float()


@contextlib.contextmanager
def _cudnn_benchmark(allowed: bool) -> Iterator[None]:
    """``cudnn.benchmark`` off inside when not ``allowed``: a whole volume has a shape of its
    own per case, and timing cuDNN's algorithms for each would cost more than it saves."""
    saved = torch.backends.cudnn.benchmark
    if not allowed:
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def region_dice(pred_regions: np.ndarray, labels: np.ndarray) -> list[float]:
    """Dice per region (WT, TC, ET) of predicted ``(3, X, Y, Z)`` bool masks against internal
    labels ``(X, Y, Z)``; both empty gives 1 (``glioseg.overlap.dice``)."""
    from glioseg.overlap import dice

    ref = regions_from_labels(np.asarray(labels))
    return [dice(pred_regions[i].astype(bool), ref[i].astype(bool)) for i in range(len(REGIONS))]


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    cases: Sequence[Any],
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    mode: str = "whole",
    roi: Sequence[int] = (64, 64, 64),
    overlap: float = 0.25,
    amp: str = "none",
    divisor: int = 1,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean region Dice over held-out cases, sharded across ranks (case ``i`` on rank
    ``i % world_size``) and summed with an all-reduce.

    Args:
        model: the plain model (not DDP-wrapped); switched to eval and back.
        cases: objects with ``image`` ``(4, X, Y, Z)`` and ``labels`` ``(X, Y, Z)`` arrays
            (``glioseg.preprocess.cache.CachedCase``).

    Returns:
        ``{"dice_WT": .., "dice_TC": .., "dice_ET": .., "dice_mean": .., "n_cases": n}``.
    """
    from glioseg.train import distributed as D

    was_training = model.training
    model.eval()
    sums = torch.zeros(len(REGIONS) + 1, dtype=torch.float64)
    try:
        for i in range(rank, len(cases), world_size):
            case = cases[i]
            image = torch.from_numpy(np.array(case.image, dtype=np.float32))[None]
            image = image.to(device).contiguous(memory_format=memory_format(channels_last))
            logits = predict_logits(model, image, mode=mode, roi=roi, overlap=overlap, amp=amp,
                                    divisor=divisor)
            pred = (logits[0] > 0).cpu().numpy()  # sigmoid(x) > 0.5  <=>  x > 0
            scores = region_dice(pred, np.asarray(case.labels))
            sums[: len(REGIONS)] += torch.tensor(scores, dtype=torch.float64)
            sums[-1] += 1
    finally:
        model.train(was_training)
    if D.is_initialized():
        sums = sums.to(D.collective_device())
        D.all_reduce_sum(sums)
        sums = sums.cpu()
    n = int(sums[-1])
    out: dict[str, float] = {}
    for j, name in enumerate(REGIONS):
        out[f"dice_{name}"] = float(sums[j] / n) if n else float("nan")
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in REGIONS])) if n else float("nan")
    out["n_cases"] = n
    return out

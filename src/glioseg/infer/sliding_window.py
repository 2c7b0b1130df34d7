"""Sliding-window inference with Gaussian importance weighting: small pure numerics + one loop.

A volume larger than the network's region of interest (ROI) is covered by overlapping windows;
each window's logits are weighted by a Gaussian importance map (centre voxels count more than
edge voxels, whose receptive field is truncated) and the weighted sum is divided by the sum of
weights. Windows are batched.

Window positions follow nnU-Net's ``compute_steps_for_sliding_window``: along each axis the
number of steps is ``ceil((size - roi) / (roi * (1 - overlap))) + 1`` and the steps are spread
evenly from 0 to ``size - roi``, so the first and last windows touch the borders and every
voxel is covered. The Gaussian is MONAI's ``compute_importance_map(mode="gaussian")``: a
separable product of 1D Gaussians centred at ``(n - 1) / 2`` with ``sigma = sigma_scale * n``
(value 1 at the centre), clamped below at ``1e-3`` so no voxel has zero weight.

Aggregation buffers: float32 by default. A float16 buffer (``accumulate_dtype``) is allowed for
float16 compute on a GPU, as nnU-Net does; bfloat16 is never used to accumulate (8-bit
mantissa: summing 8 windows loses ~1% of the value), so bf16 compute still sums in float32.

Everything stays where the volume is (a GPU when the predictor moved it there): windows are cut
from it, batched, weighted and summed into one buffer on that device; only the caller copies
anything back. A single unweighted window (the whole-box mode) is the forward itself, with no
buffers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from glioseg.errors import InputError

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""A network on windows: ``(B, C, x, y, z)`` float32 -> ``(B, K, x, y, z)`` logits."""

MIN_WEIGHT = 1e-3
"""Smallest importance weight (MONAI's clamp), so that every voxel gets a finite average."""


def compute_steps(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[list[int]]:
    """Start positions of the windows along each axis (nnU-Net's scheme).

    Args:
        image_size: ``(X, Y, Z)`` of the volume; each at least the ROI size.
        roi_size: ``(x, y, z)`` window size.
        overlap: fraction of a window shared with its neighbour, ``0 <= overlap < 1``
            (the step is at most ``roi * (1 - overlap)``).

    Returns:
        One sorted list of start indices per axis; the first is 0 and the last is
        ``size - roi``, consecutive starts differ by at most ``roi * (1 - overlap)``.
    """
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if len(image_size) != len(roi_size):
        raise InputError(f"image size {tuple(image_size)} and ROI {tuple(roi_size)} differ in rank")
    steps = []
    for size, roi in zip(image_size, roi_size, strict=True):
        if size < roi:
            raise InputError(f"image size {tuple(image_size)} smaller than ROI {tuple(roi_size)}")
        target = roi * (1 - overlap)
        n = int(math.ceil((size - roi) / target)) + 1 if size > roi else 1
        if n == 1:
            steps.append([0])
            continue
        actual = (size - roi) / (n - 1)
        steps.append([int(round(actual * i)) for i in range(n)])
    return steps


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[tuple[slice, slice, slice]]:
    """Spatial slices of every window, in C order of the per-axis steps."""
    steps = compute_steps(image_size, roi_size, overlap)
    return [
        (slice(sx, sx + roi_size[0]), slice(sy, sy + roi_size[1]), slice(sz, sz + roi_size[2]))
        for sx in steps[0]
        for sy in steps[1]
        for sz in steps[2]
    ]


def gaussian_importance_map(roi_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian weights of a window, ``(x, y, z)`` float32, at most 1, at least ``MIN_WEIGHT``.

    Same values as MONAI's ``compute_importance_map(roi_size, mode="gaussian", sigma_scale)``.
    Symmetric under flips of any axis, so mirrored test-time augmentation keeps the weights.
    """
    out = np.ones((), dtype=np.float64)
    for n in roi_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        g = np.exp(-(x**2) / (2.0 * (sigma_scale * n) ** 2))
        out = np.multiply.outer(out, g)
    return np.maximum(out, max(float(out.min()), MIN_WEIGHT)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def importance_weights(roi_size: tuple[int, ...], sigma_scale: float | None,
                       device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``gaussian_importance_map`` (``sigma_scale`` None: ones) as a tensor on ``device``, made
    once per ROI, device and dtype (every case of a folder shares its windows' weights)."""
    weight = (torch.ones(roi_size) if sigma_scale is None
              else torch.from_numpy(gaussian_importance_map(roi_size, sigma_scale)))
    return weight.to(device=device, dtype=dtype)


def fit_roi(image_size: Sequence[int], roi_size: Sequence[int], divisor: int = 1) -> tuple[int, ...]:
    """The window actually used: the ROI, shrunk on axes where the volume is smaller.

    A small volume is then covered by one window of its own size rounded up to ``divisor``
    (networks need sizes divisible by ``2 ** (n_stages - 1)``) instead of a padded full ROI.
    """
    out = []
    for size, roi in zip(image_size, roi_size, strict=True):
        if roi % divisor:
            raise InputError(f"ROI {tuple(roi_size)} is not divisible by the network's {divisor}")
        out.append(min(int(roi), int(math.ceil(size / divisor) * divisor)))
    return tuple(out)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def sliding_window_inference(
    image: torch.Tensor | np.ndarray,
    predictor: Predictor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    gaussian: bool = True,
    sigma_scale: float = 0.125,
    divisor: int = 1,
    accumulate_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Logits of a whole volume from windowed network calls.

    Args:
        image: ``(C, X, Y, Z)`` float32 volume (any size; padded with zeros where smaller
            than the window, the padding is cropped off the result).
        predictor: ``(B, C, x, y, z)`` -> ``(B, K, x, y, z)`` logits (any float dtype).
        roi_size: window ``(x, y, z)``, each divisible by ``divisor``.
        overlap: fraction shared by neighbouring windows (0.5 = nnU-Net's step 0.5).
        batch_size: windows per network call.
        gaussian: Gaussian importance weighting (else every voxel of a window weighs 1).
        sigma_scale: Gaussian sigma as a fraction of the ROI.
        divisor: spatial sizes the network accepts are multiples of this.
        accumulate_dtype: dtype of the aggregation buffers (float32 or float16; see module).
        device: where windows are sent (the buffers stay on ``image``'s device).
        progress: show a progress bar over window batches.

    Returns:
        ``(K, X, Y, Z)`` weighted-average logits, ``accumulate_dtype``, on ``image``'s device.
    """
    if accumulate_dtype == torch.bfloat16:
        raise InputError("bfloat16 aggregation buffers lose precision; use float32")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    x = torch.as_tensor(image)
    if x.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(x.shape)}")
    size = tuple(int(s) for s in x.shape[1:])
    roi = fit_roi(size, roi_size, divisor)
    padded = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
    if padded != size:
        pad = x.new_zeros((x.shape[0], *padded))
        pad[:, : size[0], : size[1], : size[2]] = x
        x = pad
    slices = window_slices(padded, roi, overlap)
    if len(slices) == 1 and not gaussian:  # one window of weight 1: the forward itself
        logits = predictor(x[None].to(device))[0].to(device=x.device, dtype=accumulate_dtype)
        return logits[:, : size[0], : size[1], : size[2]]
    weight = importance_weights(roi, sigma_scale if gaussian else None, x.device,
                                accumulate_dtype)
    out: torch.Tensor | None = None
    norm = torch.zeros(padded, dtype=accumulate_dtype, device=x.device)
    batches = list(_batches(slices, batch_size))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="windows", unit="batch", leave=False)
    for batch in batches:
        windows = torch.stack([x[(slice(None), *s)] for s in batch]).to(device)
        logits = predictor(windows)
        if out is None:
            out = torch.zeros((logits.shape[1], *padded), dtype=accumulate_dtype, device=x.device)
        logits = logits.to(device=x.device, dtype=accumulate_dtype)
        for j, s in enumerate(batch):
            out[(slice(None), *s)].addcmul_(logits[j], weight)
            norm[s] += weight
    assert out is not None
    out /= norm
    return out[:, : size[0], : size[1], : size[2]]

"""Preprocessing as pure functions of arrays: crop to the brain, z-score, resample, restore.

The same functions run when the cache is built (``glioseg preprocess``) and inside the
predictor, in memory, so a model always sees inputs prepared exactly as in training.

Pipeline (``preprocess_arrays``)::

    image (4, X, Y, Z)  --crop to brain bbox-->  (4, x, y, z)  --z-score over brain-->
      --resample to spacing_out (optional)-->  (4, x', y', z')

``restore_to_original`` undoes the geometry (resample back to the cropped shape, paste into
the bounding box) for labels or probabilities predicted in cache space.

Resampling convention: voxel centres of the input and output grids span the same physical
extent (pixel edges aligned, as ``scipy.ndimage.zoom(grid_mode=True)``), so output voxel ``o``
samples input position ``(o + 0.5) * n_in / n_out - 0.5`` along each axis.

Labels are resampled as one-hot channels with linear interpolation followed by argmax
(as nnU-Net does) rather than nearest neighbour: nearest neighbour moves boundaries by up to
half a voxel and drops structures thinner than a voxel when down-sampling, while the one-hot
average keeps the class that covers most of each output voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from glioseg.errors import GliosegError

N_LABELS = 4
"""Internal label values 0..3 (see ``glioseg.data.labels``)."""


class PreprocessError(GliosegError, ValueError):
    """Input that cannot be preprocessed; the message says what is wrong."""


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain voxels: any modality non-zero.

    Args:
        image: ``(C, X, Y, Z)`` float.

    Returns:
        ``(X, Y, Z)`` bool.
    """
    return np.any(image != 0, axis=0)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open bounding box ``[[x0, x1], [y0, y1], [z0, z1]]`` of the True voxels of ``mask``.

    Raises:
        PreprocessError: if ``mask`` has no True voxel.
    """
    if not mask.any():
        raise PreprocessError("no brain voxels: every modality is zero everywhere")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def crop(array: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """View of the last three axes of ``array`` ``(..., X, Y, Z)`` inside the half-open ``bbox``."""
    sl = tuple(slice(int(lo), int(hi)) for lo, hi in bbox)
    return array[(Ellipsis, *sl)]


def zscore(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[list[float]]]:
    """Per-modality z-score over the voxels of ``mask``; 0 outside the mask.

    Args:
        image: ``(C, X, Y, Z)`` float.
        mask: ``(X, Y, Z)`` bool, the brain.

    Returns:
        ``(C, X, Y, Z)`` float32 normalised image, and ``[mean, std]`` per channel (a channel
        constant over the brain gets std 1, so it becomes 0 rather than NaN).
    """
    out = np.zeros(image.shape, dtype=np.float32)
    stats: list[list[float]] = []
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        mean = float(values.mean())
        std = float(values.std())
        if not np.isfinite(std) or std < 1e-8:
            std = 1.0
        out[c][mask] = ((values - mean) / std).astype(np.float32)
        stats.append([mean, std])
    return out, stats


def target_shape(
    shape: Sequence[int], spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[int, int, int]:
    """Grid shape covering the same extent as ``shape`` at ``spacing_in``, at ``spacing_out``."""
    return tuple(
        max(1, int(round(n * si / so))) for n, si, so in zip(shape, spacing_in, spacing_out, strict=True)
    )  # type: ignore[return-value]


def resample_to_shape(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a 3D ``volume`` ``(X, Y, Z)`` onto a grid of ``shape`` (same physical extent).

    Args:
        volume: ``(X, Y, Z)`` array; interpolation happens in float32 for orders > 0.
        shape: output shape.
        order: spline order (0 nearest, 1 linear, 3 cubic).

    Returns:
        ``(x, y, z)`` array of ``volume``'s dtype for order 0, float32 otherwise.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(volume.shape) == shape:
        return volume.copy() if order == 0 else volume.astype(np.float32)
    ratio = np.array(volume.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
    offset = 0.5 * ratio - 0.5
    src = volume if order == 0 else volume.astype(np.float32, copy=False)
    return ndimage.affine_transform(
        src, ratio, offset=offset, output_shape=shape, order=order, mode="nearest",
        prefilter=order > 1,
    )


def resample_labels(labels: np.ndarray, shape: Sequence[int], n_labels: int = N_LABELS) -> np.ndarray:
    """Resample integer labels ``(X, Y, Z)`` to ``shape``: one-hot, linear, argmax -> uint8."""
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape) == shape:
        return labels.astype(np.uint8, copy=True)
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint8)
    for value in range(n_labels):
        onehot = (labels == value).astype(np.float32)
        if not onehot.any():
            continue
        p = resample_to_shape(onehot, shape, order=1)
        better = p > best
        out[better] = value
        best[better] = p[better]
    return out


def _as_spacing(spacing: float | Sequence[float]) -> list[float]:
    if np.isscalar(spacing):
        return [float(spacing)] * 3  # type: ignore[arg-type]
    values = [float(s) for s in spacing]  # type: ignore[union-attr]
    if len(values) != 3:
        raise PreprocessError(f"spacing must be one number or three, got {values}")
    return values


def preprocess_arrays(
    image: np.ndarray,
    labels: np.ndarray | None,
    spacing_in: float | Sequence[float],
    spacing_out: float | Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop to the brain, z-score per modality, optionally resample.

    Args:
        image: ``(4, X, Y, Z)`` float, modalities in ``MODALITIES`` order, original grid.
        labels: ``(X, Y, Z)`` uint8 internal labels 0..3, or None.
        spacing_in: voxel size (mm) of the original grid, one number or three.
        spacing_out: voxel size (mm) to resample to, or None to keep the original grid.

    Returns:
        ``image`` ``(4, x, y, z)`` float32 (0 outside the brain), ``labels`` ``(x, y, z)``
        uint8 or None, and the JSON-able ``geometry`` dict: ``original_shape``,
        ``original_spacing``, ``spacing`` (of the returned grid), ``bbox`` (half-open, original
        voxels), ``cropped_shape``, ``shape`` (returned grid), ``zscore`` (``[mean, std]`` per
        modality).

    Raises:
        PreprocessError: for a non-4D image, labels on another grid, or an all-zero image.
    """
    if image.ndim != 4:
        raise PreprocessError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if labels is not None and tuple(labels.shape) != tuple(image.shape[1:]):
        raise PreprocessError(f"labels shape {labels.shape} differs from image {image.shape[1:]}")
    sp_in = _as_spacing(spacing_in)
    mask = brain_mask(image)
    bbox = bounding_box(mask)
    mask_c = crop(mask, bbox)
    img, stats = zscore(crop(image, bbox), mask_c)
    lab = None if labels is None else np.ascontiguousarray(crop(labels, bbox), dtype=np.uint8)
    cropped_shape = list(img.shape[1:])
    shape = cropped_shape
    sp = sp_in
    if spacing_out is not None:
        sp = _as_spacing(spacing_out)
        shape = list(target_shape(cropped_shape, sp_in, sp))
        if shape != cropped_shape:
            mask_r = resample_labels(mask_c.astype(np.uint8), shape, n_labels=2).astype(bool)
            img = np.stack([resample_to_shape(ch, shape, order=3) for ch in img])
            img[:, ~mask_r] = 0.0  # keep "0 outside the brain" after cubic overshoot
            if lab is not None:
                lab = resample_labels(lab, shape)
    geometry = {
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_spacing": sp_in,
        "spacing": sp,
        "bbox": bbox,
        "cropped_shape": [int(s) for s in cropped_shape],
        "shape": [int(s) for s in shape],
        "zscore": stats,
    }
    return np.ascontiguousarray(img, dtype=np.float32), lab, geometry


def restore_to_original(
    array: np.ndarray, geometry: dict[str, Any], order: int, fill: float = 0
) -> np.ndarray:
    """Map an array from cache space back onto the original grid.

    Args:
        array: ``(x, y, z)`` labels or ``(C, x, y, z)`` probabilities in cache space
            (``geometry["shape"]``).
        geometry: the dict returned by ``preprocess_arrays`` (or a cache ``meta.json``).
        order: interpolation order when the cache was resampled: 0 (nearest) for labels or
            1 for probabilities; integer labels with order 1 are restored one-hot linear and
            argmax (the same as ``resample_labels``), which follows boundaries more closely.
        fill: value outside the brain bounding box (background).

    Returns:
        ``(X, Y, Z)`` or ``(C, X, Y, Z)`` on the original grid (``geometry["original_shape"]``);
        dtype of ``array`` for order 0 or integer input, float32 otherwise.
    """
    shape = tuple(geometry["shape"])
    if tuple(array.shape[-3:]) != shape or array.ndim not in (3, 4):
        raise PreprocessError(
            f"array shape {array.shape} does not match the cache grid {shape} (with an "
            "optional leading channel axis)"
        )
    cropped = tuple(geometry["cropped_shape"])
    channels = array[None] if array.ndim == 3 else array
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if cropped != shape:
        if integer and order > 0:  # labels: one-hot linear + argmax (smoother than nearest)
            n = int(array.max()) + 1 if array.size else 1
            channels = np.stack([resample_labels(ch, cropped, n_labels=n) for ch in channels])
            channels = channels.astype(array.dtype)
        else:
            channels = np.stack([resample_to_shape(ch, cropped, order=order) for ch in channels])
    dtype = array.dtype if order == 0 or integer else np.float32
    out = np.full((channels.shape[0], *geometry["original_shape"]), fill, dtype=dtype)
    crop(out, geometry["bbox"])[...] = channels
    return out[0] if array.ndim == 3 else out

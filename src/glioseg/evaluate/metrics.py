"""Legacy BraTS metrics (2017-2021 challenges, the 2020 leaderboard), as pure numpy functions.

Every function takes boolean masks of one region on one grid, ``(X, Y, Z)`` bool, and
optionally the voxel ``spacing`` (mm per axis); ``spacing=None`` measures distances in voxel
units, as the challenge's CBICA portal (CaPTk) did.

Conventions, those of the challenge's scoring (see ``docs`` and the module functions):

- Dice: both masks empty -> 1; exactly one empty -> 0.
- HD95: surface voxels = mask minus its erosion by the 6-connected structuring element;
  distances from each surface to the other, exact Euclidean (the values of the Euclidean
  distance transform of the other surface, found by a k-d tree for speed); the 95th
  percentile of the two directed distance sets POOLED into one set (this is medpy's ``hd95``;
  MONAI instead takes the larger of the two directed percentiles). Both masks empty -> 0;
  exactly one empty -> the diagonal of the grid (373.13 for 240x240x155).
- Sensitivity and specificity over the whole volume; 1 when the quantity is 0/0 (e.g. an empty
  reference and an empty prediction give sensitivity 1).

Speed: work is done on the bounding box of the union of both masks plus a margin, which gives
exactly the values of the full grid (see ``union_bbox``), and surface distances cost in
proportion to the surfaces (k-d tree), not to the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glioseg.data import labels as L
from glioseg.overlap import (  # noqa: F401  (re-exported: the evaluation's metric names)
    ConfusionCounts,
    EvaluationError,
    check_pair,
    confusion_counts,
    dice,
    dice_from_counts,
)

REGION_NAMES: tuple[str, ...] = L.REGIONS
"""Region order of every region array: WT, TC, ET."""

BRATS_GRID: tuple[int, int, int] = (240, 240, 155)
"""The BraTS grid; its diagonal, 373.1287 voxels, is the HD95 of a one-sided empty case."""


Spacing = Sequence[float] | None


def _spacing3(spacing: Spacing) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(s > 0 for s in sp):
        raise EvaluationError(f"spacing must be three positive numbers, got {spacing!r}")
    return sp  # type: ignore[return-value]


def _present_outside(labels: np.ndarray, allowed: set[int]) -> list[int]:
    """Values of integer ``labels`` not in ``allowed`` (sorted); cheap for the usual few labels."""
    if labels.size == 0:
        return []
    lo, hi = int(labels.min()), int(labels.max())
    if hi - lo > 64:  # unusual data: fall back to a full unique
        return sorted(int(v) for v in np.unique(labels) if int(v) not in allowed)
    return [v for v in range(lo, hi + 1) if v not in allowed and bool((labels == v).any())]


def regions_from_labels(
    labels: np.ndarray, label_scheme: str, case_id: str = "", source: str = ""
) -> np.ndarray:
    """File labels -> regions ``(3, X, Y, Z)`` bool in order WT, TC, ET.

    Wraps ``glioseg.data.labels`` (its scheme tables and ``regions_from_labels``):
    brats2020/2021 files ET = 4, TC = 1 + 4, WT = 1 + 2 + 4; brats2023 files ET = 3,
    TC = 1 + 3, WT = 1 + 2 + 3 (a 4 there is an error, never ET); msd 1 edema, 2 core, 3 ET.

    Args:
        labels: ``(X, Y, Z)`` label values as stored in the file (any integer or float dtype).
        label_scheme: the file's label scheme (``brats2020``, ``brats2021``, ``brats2023``,
            ``msd``).
        case_id: named in the error message.
        source: the file (or "prediction"/"reference"), named in the error message.

    Raises:
        EvaluationError: a value outside the scheme, a non-integer value or NaN, naming the case.
    """
    where = ": ".join(p for p in (case_id, source) if p)
    where = f"{where}: " if where else ""
    scheme = L.get_scheme(label_scheme)
    try:
        labels = L.integer_labels(labels)
    except L.LabelError as exc:
        raise EvaluationError(f"{where}{exc}") from None
    bad = _present_outside(labels, set(scheme.allowed))
    if bad:
        raise EvaluationError(
            f"{where}labels {bad} are not allowed in the {label_scheme} scheme "
            f"(allowed: {sorted(scheme.allowed)})"
        )
    table = np.zeros(max(scheme.allowed) + 1, dtype=np.uint8)
    for file_value, internal in scheme.file_to_internal:
        table[file_value] = internal
    return L.regions_from_labels(table[labels])


def sensitivity_from_counts(c: ConfusionCounts) -> float:
    """TP / (TP + FN). Empty reference: 1 if the prediction is empty too, else 0."""
    if c.tp + c.fn == 0:
        return 1.0 if c.fp == 0 else 0.0
    return c.tp / (c.tp + c.fn)


def specificity_from_counts(c: ConfusionCounts) -> float:
    """TN / (TN + FP) over the whole volume; 1 when there is no reference-negative voxel."""
    return 1.0 if c.tn + c.fp == 0 else c.tn / (c.tn + c.fp)


def grid_diagonal(shape: Sequence[int], spacing: Spacing = None) -> float:
    """Length of the grid's diagonal, in voxels (``spacing=None``) or mm: the HD95 penalty."""
    return float(np.linalg.norm(np.asarray(shape, float) * np.asarray(_spacing3(spacing))))


def union_bbox(masks: Sequence[np.ndarray], margin: int) -> tuple[slice, ...] | None:
    """Slices of the bounding box of the union of ``masks`` grown by ``margin``, clipped to the
    grid; None if every mask is empty.

    A margin of 1 keeps erosion and distance transforms exact: all surface voxels of both masks
    lie inside, and at the grid's edge the crop edge is the grid's edge, as before.
    """
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        if idx.size == 0:
            return None
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + 1 + margin, union.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def grow_box(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, int(n)))
        for s, n in zip(box, shape, strict=True)
    )


def surface_points(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a ``(X, Y, Z)`` bool mask as ``(N, 3)`` int64 indices in C order: the
    voxels of the mask with a 6-neighbour outside it (voxels outside the grid count as
    background), i.e. ``argwhere(mask & ~binary_erosion(mask, 6-connected structure))``.

    Only the mask's voxels are visited (one gather per neighbour on the flat padded mask), so
    scattered specks over a whole grid cost little more than one compact mask.
    """
    padded = np.pad(np.asarray(mask, bool), 1)
    flat = padded.ravel()
    idx = np.flatnonzero(flat)
    _, ny, nz = padded.shape
    inner = np.ones(idx.size, bool)
    for step in (1, nz, ny * nz):
        inner &= flat[idx - step]
        inner &= flat[idx + step]
    return np.stack(np.unravel_index(idx[~inner], padded.shape), axis=1) - 1


def directed_surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every surface voxel of each mask to the other mask's surface.

    Each distance is the exact Euclidean distance (in ``spacing`` units) to the nearest surface
    voxel of the other mask: the value the Euclidean distance transform of the other surface
    takes there. It is found with a k-d tree over the surface voxels (``scipy.spatial``), whose
    cost follows the size of the surfaces rather than of their bounding box, which a distant
    false positive can make the whole volume.

    Args:
        pred, ref: ``(X, Y, Z)`` bool, both non-empty.
        spacing: voxel size (mm); None = voxel units.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: 1D float64 arrays, one distance per surface voxel of
        ``pred`` (resp. ``ref``), in the C order of the voxels (``surface_points``).
    """
    from scipy.spatial import cKDTree

    pred, ref = check_pair(pred, ref)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    scale = np.asarray(_spacing3(spacing))
    pred_pts, ref_pts = (surface_points(m) * scale for m in (pred, ref))
    pred_to_ref = cKDTree(ref_pts, balanced_tree=False).query(pred_pts)[0]
    ref_to_pred = cKDTree(pred_pts, balanced_tree=False).query(ref_pts)[0]
    return pred_to_ref, ref_to_pred


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Spacing = None,
    grid_shape: Sequence[int] | None = None,
) -> float:
    """95th percentile Hausdorff distance as the BraTS 2017-2021 scoring computed it.

    The two directed distance sets (pred surface -> ref surface, ref surface -> pred surface)
    are pooled and their 95th percentile taken (``numpy.percentile``, linear interpolation):
    medpy's ``hd95``, not the max of two directed percentiles.

    Args:
        pred, ref: ``(X, Y, Z)`` bool masks.
        spacing: voxel size in mm; None (default) = voxel units, as the challenge.
        grid_shape: the full grid when ``pred``/``ref`` are crops of it; sets the penalty for a
            one-sided empty case (default: ``pred.shape``).

    Returns:
        0 if both are empty; the grid diagonal (``grid_diagonal``) if exactly one is empty.
    """
    pred, ref = check_pair(pred, ref)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return grid_diagonal(grid_shape if grid_shape is not None else pred.shape, spacing)
    pred_to_ref, ref_to_pred = directed_surface_distances(pred, ref, spacing)
    return float(np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95))


def legacy_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Spacing = None,
    grid_shape: Sequence[int] | None = None,
    outside_voxels: int = 0,
) -> dict[str, float]:
    """Dice, HD95, sensitivity and specificity of one region.

    Args:
        pred, ref: ``(X, Y, Z)`` bool masks (may be a crop of the grid holding every foreground
            voxel of both).
        spacing: voxel size in mm, or None for voxel units.
        grid_shape: the full grid (default ``pred.shape``), for the HD95 penalty.
        outside_voxels: voxels of the full grid outside the crop (true negatives).

    Returns:
        ``{"dice", "hd95", "sensitivity", "specificity"}``.
    """
    c = confusion_counts(pred, ref)
    c = c._replace(tn=c.tn + int(outside_voxels))
    return {
        "dice": dice_from_counts(c),
        "hd95": hd95(pred, ref, spacing, grid_shape),
        "sensitivity": sensitivity_from_counts(c),
        "specificity": specificity_from_counts(c),
    }

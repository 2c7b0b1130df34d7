"""Lesion-wise BraTS metrics (BraTS 2023 onwards), as pure numpy functions.

Follows the challenge's 2023 reference code (``BraTS-2023-Metrics``, ``eval.py``) step by step:

1. The reference mask of a region is dilated ``dilation`` times (3 for GLI/SSA/PED, 1 for
   MEN/MET) with the 18-connected structuring element, only to merge nearby lesions: the
   26-connected components of the dilated mask define the lesions, and each reference voxel
   belongs to the component that covers it.
2. The prediction is split into 26-connected components. A predicted component matches a
   reference lesion when it overlaps that lesion dilated ``dilation`` times; a predicted
   component that matches no reference lesion (small ones included) is a false positive.
3. Each reference lesion is scored against the union of its matched components: Dice, and
   HD95 by DeepMind's surface-distance method (below); a missed lesion scores Dice 0 and
   HD95 374.
4. Lesions whose volume (voxels x voxel volume, mm^3) is ``min_volume`` (50; 2 for MET) or
   less are left out of the averages (they still turn predicted components into matches rather
   than false positives).
5. Lesion-wise Dice = sum of lesion Dice / (lesions + false positives); lesion-wise HD95 =
   (sum of lesion HD95 + 374 per false positive) / (lesions + false positives); 0/0 gives
   Dice 1 and HD95 0.

Each surface distance is the exact Euclidean distance to the nearest surfel of the other mask
(DeepMind reads it off a distance transform; a k-d tree gives the same values faster). The
work follows the reference, not the grid: one connected-component pass over the prediction,
then lesions, zones and matches in the reference's box grown by ``dilation + 1`` (nothing of
a lesion or its zone lies outside), and each lesion scored in the hull of its own box and its
matched components' boxes. A predicted component touching no zone is a false positive and
costs nothing more, so hundreds of scattered specks add one cc3d pass.

Lesion HD95 is DeepMind's ``compute_robust_hausdorff(compute_surface_distances(...), 95)``,
which the 2023 reference code calls: surface elements ("surfels") sit on the corners of the
voxel grid, each weighted by its area (marching-cubes style 2x2x2 neighbourhood codes; the
code-to-area table is MONAI's copy of DeepMind's), the 95th percentile of each directed
distance set is taken by area, and the larger of the two directed percentiles is returned.
This is not the legacy pooled HD95 of ``glioseg.evaluate.metrics.hd95``.

Units, as the 2023 reference code: it reads the voxel size from the NIfTI header
(``sx, sy, sz = pred_nii.header.get_zooms()``), computes each lesion's volume as
``voxels * sx * sy * sz`` and compares it with the threshold (so the threshold is 50 mm^3, which
is 50 voxels only on a 1 mm grid: 6.25 voxels at 2 mm), and passes ``(sx, sy, sz)`` to the
surface distances (HD95 in mm). The dilations are counted in voxels whatever the spacing. Here
``spacing`` is that voxel size; ``evaluate_folder`` passes the header's, and ``spacing=None``
means 1 mm per voxel (the BraTS grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import cc3d
import numpy as np
from scipy import ndimage

from glioseg.evaluate.metrics import (
    Spacing,
    _spacing3,
    check_pair,
    dice,
    grow_box,
    union_bbox,
)

MISS_HD95: float = 374.0
"""HD95 of a missed reference lesion or a false-positive component (2023 reference code)."""

DILATION: int = 3
"""Dilation iterations merging nearby lesions (GLI, SSA, PED; MEN and MET use 1)."""

MIN_VOLUME: float = 50.0
"""Reference lesions of this volume (mm^3: voxels x voxel volume) or less are left out (MET: 2)."""

CHALLENGE_PARAMETERS: dict[str, tuple[int, float]] = {
    "GLI": (3, 50.0),
    "SSA": (3, 50.0),
    "PED": (3, 50.0),
    "MEN": (1, 50.0),
    "MET": (1, 2.0),
}
"""(dilation, min_volume) of each BraTS 2023 challenge, from its reference code."""


def lesion_parameters(case_id: str) -> tuple[int, float]:
    """(dilation, min_volume) for a case id such as ``BraTS-MET-00001-000``; the glioma
    defaults (3, 50) for any other id."""
    import re

    m = re.match(r"BraTS-([A-Z]+)-", case_id)
    return CHALLENGE_PARAMETERS.get(m.group(1) if m else "", (DILATION, MIN_VOLUME))


_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # 18-connected, as the 2023 code

# Bit of each corner of the 2x2x2 neighbourhood, the encoding kernel of DeepMind and MONAI:
# kernel[a, b, c] for the voxel at offset (a, b, c) from the neighbourhood's lowest corner.
_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)


class SurfaceDistances(NamedTuple):
    """Surfels of two masks with their distance to the other surface, sorted by distance.

    Attributes:
        ref_to_pred: distance of each reference surfel to the predicted surface (inf if the
            prediction is empty), ascending.
        ref_areas: area of each reference surfel, in the same order.
        pred_to_ref: distance of each predicted surfel to the reference surface, ascending.
        pred_areas: area of each predicted surfel, in the same order.
    """

    ref_to_pred: np.ndarray
    ref_areas: np.ndarray
    pred_to_ref: np.ndarray
    pred_areas: np.ndarray


@dataclass(frozen=True)
class LesionScore:
    """One reference lesion.

    Attributes:
        lesion: lesion number (component of the dilated reference), from 1.
        volume: voxels x voxel volume.
        dice: Dice against the matched predicted components (0 if none).
        hd95: DeepMind robust HD95 against them (``MISS_HD95`` if none).
        matched: predicted component numbers that overlap the dilated lesion.
        counted: whether the lesion enters the averages (volume above ``min_volume``).
    """

    lesion: int
    volume: float
    dice: float
    hd95: float
    matched: tuple[int, ...]
    counted: bool


@dataclass(frozen=True)
class LesionWiseResult:
    """Lesion-wise scores of one region of one case.

    Attributes:
        dice: lesion-wise Dice.
        hd95: lesion-wise HD95.
        n_tp: counted reference lesions matched by the prediction.
        n_fn: counted reference lesions missed.
        n_fp: predicted components matching no reference lesion.
        lesions: every reference lesion, counted or not.
    """

    dice: float
    hd95: float
    n_tp: int
    n_fn: int
    n_fp: int
    lesions: tuple[LesionScore, ...]


@lru_cache(maxsize=16)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area of the surface inside a 2x2x2 neighbourhood, for each of the 256 codes, float64."""
    try:  # the normals in float64, exactly DeepMind's table
        from monai.metrics.utils import _get_neighbour_code_to_normals_table

        normals = _get_neighbour_code_to_normals_table().cpu().numpy().astype(np.float64)
        sx, sy, sz = spacing
        scale = np.array([sy * sz, sx * sz, sx * sy])
        return np.linalg.norm(normals * scale, axis=-1).sum(-1)
    except ImportError:  # pragma: no cover - older/newer MONAI without the private helper
        from monai.metrics.utils import create_table_neighbour_code_to_surface_area

        table, _ = create_table_neighbour_code_to_surface_area(spacing)
        return table.cpu().numpy().astype(np.float64)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool -> ``(X+1, Y+1, Z+1)`` uint8 code of every voxel corner: bit set for
    each of the 8 voxels around the corner that is inside (outside the grid = outside)."""
    m = np.pad(mask.astype(np.uint8), 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                codes |= m[a : a + n0, b : b + n1, c : c + n2] * _KERNEL[a, b, c]
    return codes


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None
) -> SurfaceDistances:
    """DeepMind's ``compute_surface_distances(ref, pred, spacing)``, with NumPy 2.

    Surfels are the voxel corners whose 2x2x2 neighbourhood is neither all inside nor all
    outside; each one's distance to the other surface is the exact Euclidean distance to the
    nearest surfel of the other mask (the value of DeepMind's distance transform there),
    found with a k-d tree (``scipy.spatial``) so the cost follows the surfaces, not the box.

    Args:
        pred, ref: ``(X, Y, Z)`` bool masks.
        spacing: voxel size (mm); None = 1 mm.

    Returns:
        the surfels of both masks with distances and areas, sorted by (distance, area) like the
        original; all arrays empty if both masks are empty.
    """
    pred, ref = check_pair(pred, ref)
    sampling = _spacing3(spacing)
    box = union_bbox([pred, ref], margin=0)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    from scipy.spatial import cKDTree

    table = _surfel_area_table(sampling)
    scale = np.asarray(sampling)
    codes = [_neighbour_codes(m[box]) for m in (ref, pred)]
    borders = [(c != 0) & (c != 255) for c in codes]
    points = [np.argwhere(b) * scale for b in borders]
    trees = [cKDTree(p, balanced_tree=False) if len(p) else None for p in points]
    out = []
    for this, other in ((0, 1), (1, 0)):
        tree = trees[other]
        if tree is None:
            dist = np.full(len(points[this]), np.inf)
        else:
            dist = tree.query(points[this])[0]
        areas = table[codes[this][borders[this]]]
        order = np.lexsort((areas, dist))
        out += [dist[order], areas[order]]
    return SurfaceDistances(*out)


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return float("inf")
    cumulative = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(idx, distances.size - 1)])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """DeepMind's ``compute_robust_hausdorff``: the larger of the two directed area-weighted
    ``percent``-th percentiles; inf when one mask has no surface."""
    return max(
        _directed_percentile(sd.ref_to_pred, sd.ref_areas, percent),
        _directed_percentile(sd.pred_to_ref, sd.pred_areas, percent),
    )


def _hull(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
    )


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Dilation of ``(X, Y, Z)`` bool by the 18-connected structure, ``iterations`` times.

    Done component by component inside each component's box grown by ``iterations`` (the
    dilation of a union is the union of the dilations), so a sparse mask costs little.
    """
    if iterations == 0:
        return mask.copy()
    out = np.zeros_like(mask, dtype=bool)
    components = cc3d.connected_components(mask, connectivity=26)
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        near = grow_box(box, iterations, mask.shape)
        out[near] |= ndimage.binary_dilation(
            components[near] == k, _DILATION_STRUCTURE, iterations=iterations
        )
    return out


def _lesions_and_zones(ref: np.ndarray, dilation: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lesions, zones)``, both ``(X, Y, Z)`` uint32: ``zones`` numbers the 26-connected
    components of the reference dilated ``dilation`` times, ``lesions`` the same numbers on the
    reference voxels only (0 elsewhere).

    Zone ``k`` is exactly lesion ``k`` dilated ``dilation`` times, the region the 2023 code
    dilates again to match predictions: each voxel's dilation is connected and holds the voxel,
    so it lies in the zone of the voxel's lesion, and every zone voxel comes from one of them.
    """
    zones = cc3d.connected_components(_dilate(ref, dilation), connectivity=26)
    zones = zones.astype(np.uint32, copy=False)
    return np.where(ref, zones, 0).astype(np.uint32, copy=False), zones


def _component_boxes(
    mask: np.ndarray, labels: np.ndarray, wanted: Sequence[int]
) -> dict[int, tuple[slice, ...]]:
    """Bounding boxes of the components ``wanted`` of ``labels`` (the components of the bool
    ``mask``), from the coordinates of the mask's voxels (no pass over the grid per component)."""
    if not wanted:
        return {}
    flat = np.flatnonzero(mask)
    values = labels.ravel()[flat]
    boxes = {}
    for m in wanted:
        idx = np.stack(np.unravel_index(flat[values == m], labels.shape))
        lo, hi = idx.min(axis=1), idx.max(axis=1) + 1
        boxes[m] = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return boxes


def _score_lesion(
    pred_cc: np.ndarray,
    matched: tuple[int, ...],
    pred_boxes: dict[int, tuple[slice, ...]],
    lesion: np.ndarray,
    lesion_box: tuple[slice, ...],
    spacing: tuple[float, float, float],
) -> tuple[float, float]:
    """Dice and DeepMind HD95 of one reference lesion (``lesion``, bool in ``lesion_box`` of the
    grid) against the union of its matched predicted components, in the hull of their boxes."""
    hull = _hull([lesion_box] + [pred_boxes[m] for m in matched])
    lesion_mask = np.zeros(tuple(s.stop - s.start for s in hull), bool)
    inner = tuple(slice(b.start - h.start, b.stop - h.start)
                  for b, h in zip(lesion_box, hull, strict=True))
    lesion_mask[inner] = lesion
    matched_mask = np.isin(pred_cc[hull], matched)
    d = dice(matched_mask, lesion_mask)
    return d, robust_hausdorff(surface_distances(matched_mask, lesion_mask, spacing))


def _match_lesions(
    pred_cc: np.ndarray, ref: np.ndarray, rbox: tuple[slice, ...], dilation: int
) -> tuple[list[tuple[int, tuple[int, ...], np.ndarray, tuple[slice, ...]]], set[int]]:
    """Each reference lesion in ``rbox`` with the predicted components touching its zone."""
    touched: set[int] = set()
    lesions, zones = _lesions_and_zones(ref[rbox], dilation)
    pred_near = pred_cc[rbox]
    offset = [s.start for s in rbox]
    per_lesion = []
    for k, (zone_box, lbox) in enumerate(
        zip(ndimage.find_objects(zones), ndimage.find_objects(lesions), strict=True),
        start=1,
    ):
        hits = np.unique(pred_near[zone_box][zones[zone_box] == k])
        matched = tuple(int(m) for m in hits[hits != 0])
        touched.update(matched)
        lesion = lesions[lbox] == k
        grid_box = tuple(slice(s.start + o, s.stop + o)
                         for s, o in zip(lbox, offset, strict=True))
        per_lesion.append((k, matched, lesion, grid_box))
    return per_lesion, touched


def _lesion_scores(
    pred: np.ndarray,
    pred_cc: np.ndarray,
    ref: np.ndarray,
    sampling: tuple[float, float, float],
    dilation: int,
    min_volume: float,
    miss_hd95: float,
) -> tuple[list[LesionScore], set[int]]:
    """Scores of every reference lesion and the predicted components that touch a zone."""
    voxel_volume = float(np.prod(sampling))
    scores: list[LesionScore] = []
    touched: set[int] = set()
    # Every lesion and its matching zone lie in the reference's box grown by the dilation:
    # the reference side is worked out there; a predicted component touching no zone is a
    # false positive without any work of its own (scattered specks cost one cc3d pass).
    rbox = union_bbox([ref], margin=dilation + 1)
    if rbox is not None:
        per_lesion, touched = _match_lesions(pred_cc, ref, rbox, dilation)
        pred_boxes = _component_boxes(pred, pred_cc, sorted(touched))
        for k, matched, lesion, grid_box in per_lesion:
            volume = float(np.count_nonzero(lesion)) * voxel_volume
            if matched:
                d, h = _score_lesion(pred_cc, matched, pred_boxes, lesion, grid_box, sampling)
            else:
                d, h = 0.0, miss_hd95
            scores.append(LesionScore(k, volume, d, h, matched, volume > min_volume))
    return scores, touched


def _summarise_lesions(
    scores: list[LesionScore], n_fp: int, miss_hd95: float
) -> LesionWiseResult:
    """Averages over the counted lesions and the false positives, and the lesion counts."""
    counted = [s for s in scores if s.counted]
    n = len(counted) + n_fp
    if n == 0:
        lw_dice, lw_hd95 = 1.0, 0.0
    else:
        lw_dice = sum(s.dice for s in counted) / n
        lw_hd95 = (sum(s.hd95 for s in counted) + n_fp * miss_hd95) / n
    n_tp = sum(1 for s in counted if s.matched)
    return LesionWiseResult(lw_dice, lw_hd95, n_tp, len(counted) - n_tp, n_fp, tuple(scores))


def lesion_wise(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Spacing = None,
    dilation: int = DILATION,
    min_volume: float = MIN_VOLUME,
    miss_hd95: float = MISS_HD95,
) -> LesionWiseResult:
    """Lesion-wise Dice and HD95 of one region (BraTS 2023 rules, see the module docstring).

    Args:
        pred, ref: ``(X, Y, Z)`` bool masks of one region.
        spacing: voxel size (mm) for distances and lesion volumes, the file header's as in the
            2023 reference code; None = 1 mm per voxel.
        dilation: dilation iterations merging nearby lesions and matching predictions.
        min_volume: lesions with volume (mm^3) <= this are left out of the averages.
        miss_hd95: HD95 of a missed lesion or a false-positive component.

    Returns:
        the lesion-wise scores; lesion and component numbers are those of the whole grid, in
        cc3d's order, as in the reference code.
    """
    pred, ref = check_pair(pred, ref)
    sampling = _spacing3(spacing)
    pred_cc, n_pred = cc3d.connected_components(pred, connectivity=26, return_N=True)
    scores, touched = _lesion_scores(pred, pred_cc, ref, sampling, dilation, min_volume,
                                     miss_hd95)
    return _summarise_lesions(scores, n_pred - len(touched), miss_hd95)

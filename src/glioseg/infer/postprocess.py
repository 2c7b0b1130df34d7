"""From region probabilities to BraTS labels: threshold, ET rule, small components, scheme.

Order of operations (``postprocess``)::

    probabilities (3, X, Y, Z) WT, TC, ET  --> regions = p > threshold
      --> internal labels (labels_from_regions: ET in TC in WT)
      --> remove whole-tumour components smaller than ``min_component`` voxels (optional)
      --> per region, components smaller than ``min_sizes`` voxels (WT, TC, ET; optional):
          a small WT component becomes background, a small TC component edema, a small ET
          component necrosis (it stays in the tumour core), as the BraTS 2023 winners' size
          thresholds (chosen per region on validation cases: ``glioseg tune-postprocess``)
      --> ET rule: a predicted ET smaller than ``et_min_voxels`` becomes necrosis
      --> file labels of the scheme asked for (from_internal)

The ET rule is the one of the BraTS 2020 winners (Isensee et al., nnU-Net for BraTS): cases
without enhancing tumour score ET Dice 1 only for an empty prediction, and a few false ET
voxels score 0, so a small predicted ET is more likely noise than tumour and is relabelled
necrosis (it stays in the tumour core).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from glioseg.data.labels import ED, ET, NCR, REGIONS, from_internal, labels_from_regions
from glioseg.errors import InputError

REGION_MEMBERS: dict[str, tuple[int, ...]] = {"WT": (NCR, ED, ET), "TC": (NCR, ET), "ET": (ET,)}
"""Internal labels inside each region."""

DEMOTED_TO: dict[str, int] = {"WT": 0, "TC": ED, "ET": NCR}
"""What a removed component of each region becomes: background, edema (still in the whole
tumour), necrosis (still in the tumour core); the nesting ET in TC in WT is kept."""


def probabilities_to_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Region probabilities ``(3, X, Y, Z)`` (WT, TC, ET) -> internal labels ``(X, Y, Z)`` uint8."""
    if probabilities.ndim != 4 or probabilities.shape[0] != 3:
        raise ValueError(f"expected (3, X, Y, Z) region probabilities, got {probabilities.shape}")
    return labels_from_regions(probabilities > threshold)


def apply_et_rule(labels: np.ndarray, et_min_voxels: int) -> np.ndarray:
    """Relabel all ET as necrosis when ``0 < ET voxels < et_min_voxels`` (internal labels).

    Returns a new ``(X, Y, Z)`` uint8 array; ``et_min_voxels <= 0`` disables the rule.
    """
    out = np.array(labels, dtype=np.uint8, copy=True)
    if et_min_voxels <= 0:
        return out
    et = out == ET
    n = int(et.sum())
    if 0 < n < et_min_voxels:
        out[et] = NCR
    return out


def remove_small_components(labels: np.ndarray, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    """Set to background every whole-tumour component smaller than ``min_voxels`` voxels.

    Components are those of the whole tumour (labels > 0), so the sub-regions of one tumour are
    kept or removed together. Uses ``cc3d`` (``connectivity`` 6, 18 or 26).

    Returns a new ``(X, Y, Z)`` uint8 array of internal labels.
    """
    return remove_small_region_components(labels, "WT", min_voxels, connectivity)


def remove_small_region_components(labels: np.ndarray, region: str, min_voxels: int,
                                   connectivity: int = 26) -> np.ndarray:
    """Demote every component of ``region`` (WT, TC or ET) smaller than ``min_voxels`` voxels
    (``DEMOTED_TO``: WT -> background, TC -> edema, ET -> necrosis).

    Args:
        labels: ``(X, Y, Z)`` internal labels.
        region: ``WT``, ``TC`` or ``ET``.
        min_voxels: components with fewer voxels are demoted; ``<= 1`` keeps everything.

    Returns:
        a new ``(X, Y, Z)`` uint8 array of internal labels.
    """
    import cc3d

    if region not in REGION_MEMBERS:
        raise InputError(f"unknown region {region!r}; known: {', '.join(REGIONS)}")
    out = np.array(labels, dtype=np.uint8, copy=True)
    if min_voxels <= 1:
        return out
    mask = np.isin(out, REGION_MEMBERS[region])
    keep = cc3d.dust(mask, threshold=int(min_voxels), connectivity=connectivity)
    out[mask & ~keep] = DEMOTED_TO[region]
    return out


def apply_size_thresholds(labels: np.ndarray, min_sizes: Sequence[int]) -> np.ndarray:
    """``remove_small_region_components`` for WT, then TC, then ET (``min_sizes`` in voxels in
    that order): an outer region first, so a removed tumour takes its core with it."""
    out = np.asarray(labels, dtype=np.uint8)
    for region, n in zip(REGIONS, min_sizes, strict=True):
        out = remove_small_region_components(out, region, int(n))
    return out


def min_sizes_in_voxels(min_size_mm3: Mapping[str, float] | None,
                        spacing: Sequence[float]) -> tuple[int, int, int]:
    """Per-region size thresholds in mm^3 -> voxels of a grid of ``spacing`` mm (rounded up,
    so a component of exactly the threshold volume is kept)."""
    if not min_size_mm3:
        return (0, 0, 0)
    voxel = float(np.prod([float(s) for s in spacing]))
    return tuple(int(np.ceil(float(min_size_mm3.get(r, 0)) / voxel - 1e-9))  # type: ignore[return-value]
                 for r in REGIONS)


def postprocess(
    probabilities: np.ndarray,
    scheme: str | None = None,
    threshold: float = 0.5,
    et_min_voxels: int = 0,
    min_component: int = 0,
    min_sizes: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Region probabilities ``(3, X, Y, Z)`` -> labels ``(X, Y, Z)`` uint8.

    Args:
        probabilities: WT, TC, ET probabilities.
        scheme: file label scheme (``brats2020``/``brats2021``: 1/2/4, ``brats2023``: 1/2/3,
            ``msd``); None returns internal labels (0 bg, 1 necrosis, 2 edema, 3 ET).
        threshold: region probability threshold.
        et_min_voxels: ET rule threshold in voxels (0 disables).
        min_component: smallest whole-tumour component kept, in voxels (0 disables).
        min_sizes: smallest component kept per region (WT, TC, ET), voxels (0 disables).
    """
    return postprocess_labels(probabilities_to_labels(probabilities, threshold), scheme,
                              et_min_voxels, min_component, min_sizes)


def has_component_step(min_component: int, min_sizes: Sequence[int]) -> bool:
    """Whether ``postprocess`` removes components (cc3d, on the host) with these sizes."""
    return min_component > 1 or any(int(n) > 1 for n in min_sizes)


def postprocess_labels(
    labels: np.ndarray,
    scheme: str | None = None,
    et_min_voxels: int = 0,
    min_component: int = 0,
    min_sizes: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """``postprocess`` after the threshold: internal labels ``(X, Y, Z)`` (ET in TC in WT
    already imposed) -> small components, ET rule, ``scheme``; arguments as ``postprocess``."""
    labels = remove_small_components(labels, min_component)
    labels = apply_size_thresholds(labels, min_sizes)
    labels = apply_et_rule(labels, et_min_voxels)
    return labels if scheme is None else from_internal(labels, scheme)

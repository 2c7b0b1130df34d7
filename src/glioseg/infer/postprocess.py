"""From region probabilities to BraTS labels: threshold, ET rule, small components, scheme.

Order of operations (``postprocess``)::

    probabilities (3, X, Y, Z) WT, TC, ET  --> regions = p > threshold
      --> internal labels (labels_from_regions: ET in TC in WT)
      --> remove whole-tumour components smaller than ``min_component`` voxels (optional)
      --> ET rule: a predicted ET smaller than ``et_min_voxels`` becomes necrosis
      --> file labels of the scheme asked for (from_internal)

The ET rule is the one of the BraTS 2020 winners (Isensee et al., nnU-Net for BraTS): cases
without enhancing tumour score ET Dice 1 only for an empty prediction, and a few false ET
voxels score 0, so a small predicted ET is more likely noise than tumour and is relabelled
necrosis (it stays in the tumour core).
"""

from __future__ import annotations

import numpy as np

from glioseg.data.labels import ET, NCR, from_internal, labels_from_regions


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
    import cc3d

    out = np.array(labels, dtype=np.uint8, copy=True)
    if min_voxels <= 1:
        return out
    keep = cc3d.dust(out > 0, threshold=int(min_voxels), connectivity=connectivity)
    out[~keep] = 0
    return out


def postprocess(
    probabilities: np.ndarray,
    scheme: str | None = None,
    threshold: float = 0.5,
    et_min_voxels: int = 0,
    min_component: int = 0,
) -> np.ndarray:
    """Region probabilities ``(3, X, Y, Z)`` -> labels ``(X, Y, Z)`` uint8.

    Args:
        probabilities: WT, TC, ET probabilities.
        scheme: file label scheme (``brats2020``/``brats2021``: 1/2/4, ``brats2023``: 1/2/3,
            ``msd``); None returns internal labels (0 bg, 1 necrosis, 2 edema, 3 ET).
        threshold: region probability threshold.
        et_min_voxels: ET rule threshold in voxels (0 disables).
        min_component: smallest whole-tumour component kept, in voxels (0 disables).
    """
    labels = probabilities_to_labels(probabilities, threshold)
    labels = remove_small_components(labels, min_component)
    labels = apply_et_rule(labels, et_min_voxels)
    return labels if scheme is None else from_internal(labels, scheme)

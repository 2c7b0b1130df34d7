"""Post-processing: thresholds, ET rule, small components (against scipy), label schemes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from glioseg.infer.postprocess import (
    apply_et_rule,
    postprocess,
    probabilities_to_labels,
    remove_small_components,
)


def test_probabilities_to_labels_by_hand() -> None:
    # voxels: background, edema only, necrosis (WT+TC), ET (all three), ET without WT
    p = np.array([
        [0.1, 0.9, 0.9, 0.9, 0.2],  # WT
        [0.1, 0.2, 0.8, 0.9, 0.2],  # TC
        [0.1, 0.3, 0.4, 0.7, 0.9],  # ET
    ], dtype=np.float32).reshape(3, 5, 1, 1)
    assert probabilities_to_labels(p)[:, 0, 0].tolist() == [0, 2, 1, 3, 3]
    assert probabilities_to_labels(p, threshold=0.75)[:, 0, 0].tolist() == [0, 2, 1, 1, 3]


def _case(et_voxels: int) -> np.ndarray:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 2
    labels[4:6, 4:6, 4:6] = 1
    labels.reshape(-1)[np.flatnonzero(labels.reshape(-1) == 2)[:et_voxels]] = 3
    return labels


def test_et_rule() -> None:
    small = _case(5)
    out = apply_et_rule(small, et_min_voxels=6)
    assert (out == 3).sum() == 0 and (out == 1).sum() == 8 + 5 and (out == 2).sum() == (small == 2).sum()
    assert (small == 3).sum() == 5  # input untouched
    exact = _case(6)
    np.testing.assert_array_equal(apply_et_rule(exact, et_min_voxels=6), exact)
    np.testing.assert_array_equal(apply_et_rule(small, et_min_voxels=0), small)
    none = _case(0)
    np.testing.assert_array_equal(apply_et_rule(none, et_min_voxels=100), none)


def test_remove_small_components_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((20, 18, 16)) < 0.25).astype(np.uint8) * rng.integers(1, 4, (20, 18, 16)).astype(np.uint8)
    for min_voxels in (2, 5, 30):
        comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        small_ids = np.flatnonzero(sizes < min_voxels) + 1
        expected = labels.copy()
        expected[np.isin(comp, small_ids)] = 0
        np.testing.assert_array_equal(remove_small_components(labels, min_voxels), expected)


def test_postprocess_schemes() -> None:
    p = np.zeros((3, 4, 1, 1), dtype=np.float32)
    p[0, 1:] = 0.9  # WT on voxels 1..3
    p[1, 2:] = 0.9  # TC on 2..3
    p[2, 3] = 0.9  # ET on 3
    assert postprocess(p, None)[:, 0, 0].tolist() == [0, 2, 1, 3]
    assert postprocess(p, "brats2020")[:, 0, 0].tolist() == [0, 2, 1, 4]
    assert postprocess(p, "brats2023")[:, 0, 0].tolist() == [0, 2, 1, 3]
    # ET of one voxel under a threshold of 2 becomes necrosis
    assert postprocess(p, "brats2020", et_min_voxels=2)[:, 0, 0].tolist() == [0, 2, 1, 1]
    # the whole tumour (3 voxels) is one component: removed with min_component 4
    assert postprocess(p, "brats2023", min_component=4)[:, 0, 0].tolist() == [0, 0, 0, 0]

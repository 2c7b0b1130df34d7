"""Lesion-wise BraTS 2023 metrics: hand-built cases, MONAI's surface distances, and a plain
full-volume re-implementation of the challenge's ``eval.py`` as independent references."""

import warnings

import cc3d
import numpy as np
import pytest
import torch
from scipy import ndimage

from glioseg.evaluate import lesionwise as LW


def monai_robust_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """DeepMind's robust HD95 computed from MONAI's subvoxel surfaces (distances and areas)."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (edges_p, edges_r), (d_pr, d_rp), (areas_p, areas_r) = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(ref), spacing=spacing, use_subvoxels=True,
            symmetric=True)
    out = []
    sides = ((d_pr.numpy(), areas_p[edges_p].numpy()), (d_rp.numpy(), areas_r[edges_r].numpy()))
    for d, a in sides:
        if d.size == 0 or not np.isfinite(d).all():
            return float("inf")
        order = np.lexsort((a, d))
        cumulative = np.cumsum(a[order]) / a.sum()
        idx = min(int(np.searchsorted(cumulative, 0.95)), d.size - 1)
        out.append(d[order][idx])
    return float(max(out))


def reference_eval_py(pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0, 1.0),
                      dilation: int = 3, threshold: float = 50.0) -> tuple[float, float, int]:
    """The 2023 challenge's get_LesionWiseScores + averaging, on the full volume, step by step
    (HD95 from MONAI's surfaces instead of the surface-distance package)."""
    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = cc3d.connected_components(ref, connectivity=26)
    pred_cc = cc3d.connected_components(pred, connectivity=26)
    dilated_cc = cc3d.connected_components(
        ndimage.binary_dilation(ref, structure=struct, iterations=dilation), connectivity=26)
    combined = np.zeros_like(dilated_cc)
    for comp in range(1, int(dilated_cc.max()) + 1):
        combined[(dilated_cc == comp) & (gt_cc > 0)] = comp
    tp, rows = [], []
    for comp in range(1, int(combined.max()) + 1):
        gt_tmp = combined == comp
        zone = ndimage.binary_dilation(gt_tmp, structure=struct, iterations=dilation)
        hits = np.unique(pred_cc[zone])
        hits = hits[hits != 0]
        tp += hits.tolist()
        pred_tmp = np.isin(pred_cc, hits) & (pred_cc > 0)
        d = 2.0 * (pred_tmp & gt_tmp).sum() / (pred_tmp.sum() + gt_tmp.sum())
        h = monai_robust_hd95(pred_tmp, gt_tmp, spacing) if pred_tmp.any() else np.inf
        rows.append((gt_tmp.sum() * np.prod(spacing), d, 374.0 if np.isinf(h) else h))
    fp = np.unique(pred_cc[~np.isin(pred_cc, tp + [0])])
    kept = [r for r in rows if r[0] > threshold]
    n = len(kept) + len(fp)
    if n == 0:
        return 1.0, 0.0, 0
    return (sum(r[1] for r in kept) / n, (sum(r[2] for r in kept) + 374.0 * len(fp)) / n,
            len(fp))


def cube(mask: np.ndarray, lo, size) -> None:
    mask[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = True


def test_two_lesions_one_matched_one_missed_plus_a_false_positive():
    """Lesion 1: 4x4x4 cube (64 voxels), predicted as its lower 4x4x3 (48 voxels):
    Dice = 2*48 / (64 + 48) = 6/7. Lesion 2: 4x4x4 cube far away, missed: Dice 0, HD95 374.
    False positive: a 3x3x3 cube far from both: Dice 0, HD95 374.
    Lesion HD95 of lesion 1: every reference surfel either lies on the prediction's surface
    (distance 0) or on the top layer one voxel above it (distance 1), and the top layer holds
    well over 5% of the area, both ways -> 1.
    Lesion-wise Dice = (6/7 + 0 + 0) / 3 = 2/7; HD95 = (1 + 374 + 374) / 3 = 749/3."""
    ref = np.zeros((40, 24, 24), bool)
    pred = np.zeros_like(ref)
    cube(ref, (5, 5, 5), (4, 4, 4))
    cube(pred, (5, 5, 5), (4, 4, 3))
    cube(ref, (25, 5, 5), (4, 4, 4))
    cube(pred, (5, 15, 15), (3, 3, 3))
    r = LW.lesion_wise(pred, ref)
    assert r.dice == pytest.approx(2 / 7)
    assert r.hd95 == pytest.approx(749 / 3)
    assert (r.n_tp, r.n_fn, r.n_fp) == (1, 1, 1)
    by_volume = sorted(r.lesions, key=lambda s: s.dice)
    assert [s.volume for s in by_volume] == [64.0, 64.0]
    assert by_volume[1].dice == pytest.approx(6 / 7) and by_volume[1].hd95 == pytest.approx(1.0)
    assert by_volume[0].dice == 0.0 and by_volume[0].hd95 == 374.0
    assert reference_eval_py(pred, ref) == pytest.approx((2 / 7, 749 / 3, 1))


@pytest.mark.parametrize(
    "dilation, empty_slabs, n_lesions", [(3, 6, 1), (3, 7, 2), (1, 2, 1), (1, 3, 2)]
)
def test_dilation_merges_nearby_lesions(dilation, empty_slabs, n_lesions):
    """Each lesion grows ``dilation`` voxels along x; grown sets touch (26-connected) when the
    lesions' nearest voxels are <= 2 * dilation + 1 apart, i.e. with 2 * dilation empty slabs
    between them, not with one more."""
    ref = np.zeros((40, 12, 12), bool)
    cube(ref, (4, 4, 4), (4, 4, 4))
    cube(ref, (8 + empty_slabs, 4, 4), (4, 4, 4))
    r = LW.lesion_wise(ref, ref, dilation=dilation)
    assert len(r.lesions) == n_lesions
    assert r.dice == 1.0 and r.hd95 == 0.0


def test_challenge_parameters_from_the_case_id():
    """2023 reference code: GLI/SSA/PED dilate 3 and drop <= 50; MEN 1 and 50; MET 1 and 2."""
    assert LW.lesion_parameters("BraTS-GLI-00001-000") == (3, 50.0)
    assert LW.lesion_parameters("BraTS-MEN-00001-000") == (1, 50.0)
    assert LW.lesion_parameters("BraTS-MET-00001-000") == (1, 2.0)
    assert LW.lesion_parameters("BraTS2021_00001") == (3, 50.0)


@pytest.mark.parametrize("distance, matched", [(3, True), (4, False)])
def test_prediction_matches_a_lesion_within_the_dilation(distance, matched):
    """A predicted component that does not overlap the lesion but lies within 3 voxels of it
    is a match (Dice 0 for the lesion, not a false positive); at 4 voxels it is a false
    positive and the lesion is missed."""
    ref = np.zeros((40, 12, 12), bool)
    pred = np.zeros_like(ref)
    cube(ref, (4, 4, 4), (4, 4, 4))  # x = 4..7
    cube(pred, (7 + distance, 4, 4), (2, 4, 4))
    r = LW.lesion_wise(pred, ref)
    assert (r.n_tp, r.n_fn, r.n_fp) == ((1, 0, 0) if matched else (0, 1, 1))
    assert r.dice == 0.0
    if matched:
        assert r.lesions[0].hd95 < 374.0
        assert r.hd95 == pytest.approx(r.lesions[0].hd95)
    else:
        assert r.hd95 == 374.0


def test_small_lesions_are_left_out_but_still_absorb_predictions():
    """A 50-voxel lesion (5x5x2) is not counted (<= 50), missed or hit; a prediction touching
    it is no false positive. A 51-voxel lesion (3x17x1) is counted."""
    ref = np.zeros((40, 44, 12), bool)
    pred = np.zeros_like(ref)
    cube(ref, (4, 4, 4), (4, 4, 4))
    cube(pred, (4, 4, 4), (4, 4, 4))  # perfect
    cube(ref, (25, 4, 4), (5, 5, 2))  # 50 voxels, missed
    r = LW.lesion_wise(pred, ref)
    assert (r.dice, r.hd95, r.n_tp, r.n_fn, r.n_fp) == (1.0, 0.0, 1, 0, 0)
    cube(pred, (25, 4, 4), (1, 1, 1))  # touches the small lesion: not a false positive
    assert LW.lesion_wise(pred, ref).n_fp == 0
    cube(ref, (25, 20, 4), (3, 17, 1))  # 51 voxels, missed: counted
    r = LW.lesion_wise(pred, ref)
    assert r.dice == pytest.approx(1 / 2) and r.hd95 == pytest.approx(374 / 2)
    # the threshold is a volume: at 2 mm^3 per voxel the 50-voxel lesion counts too
    r = LW.lesion_wise(pred, ref, spacing=(2.0, 1.0, 1.0))
    assert len([s for s in r.lesions if s.counted]) == 3


def test_empty_cases():
    empty = np.zeros((20, 20, 20), bool)
    lesion = empty.copy()
    cube(lesion, (5, 5, 5), (4, 4, 4))
    assert LW.lesion_wise(empty, empty).dice == 1.0
    assert LW.lesion_wise(empty, empty).hd95 == 0.0
    r = LW.lesion_wise(lesion, empty)  # only a false positive
    assert (r.dice, r.hd95, r.n_fp) == (0.0, 374.0, 1)
    r = LW.lesion_wise(empty, lesion)  # only a missed lesion
    assert (r.dice, r.hd95, r.n_fn) == (0.0, 374.0, 1)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.5)])
def test_surface_distances_match_monai_subvoxel_surfaces(spacing):
    rng = np.random.default_rng(11)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((26, 28, 22)), 2.0) > 0.54
        b = ndimage.gaussian_filter(rng.random((26, 28, 22)), 2.0) > 0.54
        sd = LW.surface_distances(a, b, spacing)
        assert LW.robust_hausdorff(sd) == pytest.approx(monai_robust_hd95(a, b, spacing))
        assert np.all(np.diff(sd.ref_to_pred) >= 0) and np.all(np.diff(sd.pred_to_ref) >= 0)


def test_surfel_areas_of_a_box_by_hand():
    """Surfels of a 4x4x4 cube against itself: all distances 0. Each face has 3x3 corner
    cells cut by a flat square of area 1 (6 x 9 of them); each edge has 3 cells cut by a
    45-degree plane through the cell, area sqrt(2)/2 (12 x 3 of them)."""
    a = np.zeros((8, 8, 8), bool)
    cube(a, (2, 2, 2), (4, 4, 4))
    sd = LW.surface_distances(a, a)
    assert np.all(sd.ref_to_pred == 0)
    assert int(np.sum(sd.ref_areas == 1.0)) == 6 * 9
    assert int(np.sum(np.isclose(sd.ref_areas, np.sqrt(2) / 2))) == 12 * 3


def ellipsoids(shape, centres, radii) -> np.ndarray:
    g = np.indices(shape, dtype=float)
    out = np.zeros(shape, bool)
    for c, r in zip(centres, radii, strict=True):
        out |= sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0
    return out


def random_case(rng: np.random.Generator, shape=(56, 48, 36), n: int = 7):
    """Reference: n random ellipsoids (some merge, some under 50 voxels); prediction: ~70% of
    them moved and resized, plus two random false-positive blobs."""
    centres = rng.uniform(5, np.array(shape) - 5, (n, 3))
    radii = rng.uniform(1.5, 4.5, (n, 3))
    keep = rng.random(n) < 0.7
    moved = centres[keep] + rng.uniform(-1.5, 1.5, (keep.sum(), 3))
    resized = radii[keep] * rng.uniform(0.7, 1.3, (keep.sum(), 3))
    fp_centres = rng.uniform(5, np.array(shape) - 5, (2, 3))
    fp_radii = rng.uniform(1, 2.5, (2, 3))
    pred = ellipsoids(shape, np.vstack([moved, fp_centres]), np.vstack([resized, fp_radii]))
    return pred, ellipsoids(shape, centres, radii)


def test_lesion_wise_equals_full_volume_reference_on_random_cases():
    rng = np.random.default_rng(8)  # seed chosen so the cases hold every kind of lesion
    kinds = set()
    for spacing in ((1.0, 1.0, 1.0), (1.0, 1.0, 2.0)):
        pred, ref = random_case(rng)
        got = LW.lesion_wise(pred, ref, spacing)
        dice, hd95, n_fp = reference_eval_py(pred, ref, spacing)
        assert got.dice == pytest.approx(dice, abs=1e-9)
        # distance maps are float32 in one of the two paths: agree to 1e-6 relative
        assert got.hd95 == pytest.approx(hd95, rel=1e-6)
        assert got.n_fp == n_fp
        kinds |= {("tp", got.n_tp > 0), ("fn", got.n_fn > 0), ("fp", got.n_fp > 0),
                  ("small", any(not s.counted for s in got.lesions))}
    assert kinds >= {("tp", True), ("fn", True), ("fp", True), ("small", True)}


def test_scattered_specks_and_a_long_match_equal_the_full_volume_reference():
    """Work is confined to the reference's box: predicted specks all over the grid must still
    each count as a false positive, and a matched component reaching far outside the box must
    be scored whole (its long arm lowers the lesion's Dice and raises its HD95)."""
    rng = np.random.default_rng(5)
    pred, ref = random_case(rng)  # (56, 48, 36)
    pred[36:, 26:, :] = ref[36:, 26:, :] = False  # room for one isolated lesion
    cube(ref, (40, 30, 10), (5, 5, 5))  # 125 voxels
    cube(pred, (40, 30, 10), (5, 5, 5))
    pred[42, 32, 15:36] = True  # the arm: 21 voxels along z, out of the lesion's box
    for _ in range(25):
        x, y, z = (int(rng.integers(0, s)) for s in ref.shape)
        if not ref[max(x - 4, 0) : x + 5, max(y - 4, 0) : y + 5, max(z - 4, 0) : z + 5].any():
            pred[x, y, z] = True
    got = LW.lesion_wise(pred, ref)
    dice, hd95, n_fp = reference_eval_py(pred, ref)
    assert got.n_fp == n_fp and n_fp >= 20
    assert got.dice == pytest.approx(dice, abs=1e-9)
    assert got.hd95 == pytest.approx(hd95, rel=1e-6)
    armed = [s for s in got.lesions if s.volume == 125.0]
    assert len(armed) == 1 and armed[0].dice == pytest.approx(2 * 125 / (125 + 146))

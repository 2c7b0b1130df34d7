"""Legacy BraTS metrics against independent references: MONAI, medpy, scipy and hand counts."""

import math

import numpy as np
import pytest
from scipy import ndimage

from glioseg.evaluate import metrics as M


def blobs(rng: np.random.Generator, shape=(28, 30, 24), sigma=1.8, level=0.56) -> np.ndarray:
    """Random smooth blobs (several components, some touching the grid's faces)."""
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(7)
    out = []
    for sigma, level in ((1.8, 0.56), (2.5, 0.52), (1.2, 0.6), (3.0, 0.5)):
        a, b = blobs(rng, sigma=sigma, level=level), blobs(rng, sigma=sigma, level=level)
        assert a.any() and b.any()
        out.append((a, b))
    return out


def test_dice_equals_monai_and_medpy(pairs):
    import torch
    from medpy.metric.binary import dc
    from monai.metrics import compute_dice

    for pred, ref in pairs:
        monai = compute_dice(torch.from_numpy(pred)[None, None].float(),
                             torch.from_numpy(ref)[None, None].float(), include_background=True)
        assert M.dice(pred, ref) == pytest.approx(float(monai), abs=1e-6)
        assert M.dice(pred, ref) == pytest.approx(dc(pred, ref), abs=1e-12)


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 1.0), (1.0, 1.5, 2.5), (0.7, 0.7, 3.0)])
def test_hd95_equals_medpy_pooled(pairs, spacing):
    from medpy.metric.binary import hd95

    for pred, ref in pairs:
        expected = hd95(pred, ref, voxelspacing=spacing)
        assert M.hd95(pred, ref, spacing) == pytest.approx(expected, abs=1e-9)


def test_hd95_far_apart_components_equals_medpy():
    """Distant specks (one at the grid's corner): the surfaces are read voxel by voxel over the
    whole grid; the result must equal medpy's on the full arrays."""
    from medpy.metric.binary import hd95

    rng = np.random.default_rng(3)
    pred = np.zeros((60, 50, 40), bool)
    ref = np.zeros_like(pred)
    ref[20:32, 15:30, 10:22] = True
    pred[21:33, 16:29, 10:23] = True
    for _ in range(6):
        x, y, z = (int(rng.integers(0, s - 2)) for s in pred.shape)
        pred[x : x + 2, y : y + 1, z : z + 2] = True
    ref[0:3, 0:2, 0:2] = True  # at the grid's corner
    for spacing in (None, (1.2, 1.0, 2.0)):
        assert M.hd95(pred, ref, spacing) == pytest.approx(hd95(pred, ref, spacing), abs=1e-9)


def test_surface_points_equal_scipy_erosion(pairs):
    """Surface = mask minus its 6-connected erosion (scipy), voxels beyond the grid outside;
    the blobs touch the grid's faces, and a full grid has only its outer layer as surface."""
    structure = ndimage.generate_binary_structure(3, 1)
    full = np.ones((4, 5, 6), bool)
    for mask in [p for pair in pairs for p in pair] + [full]:
        expected = np.argwhere(mask & ~ndimage.binary_erosion(mask, structure))
        np.testing.assert_array_equal(M.surface_points(mask), expected)
    assert len(M.surface_points(full)) == 4 * 5 * 6 - 2 * 3 * 4
    assert M.surface_points(np.zeros((3, 3, 3), bool)).shape == (0, 3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_multilesion_pooled_differs_from_max_of_directed():
    """Reference = a 5x5x5 cube A plus a 2x2x2 cube B 15 voxels away; prediction = A only.

    Surfaces: A has 125 - 27 = 98 surface voxels, B all 8 of its voxels. Prediction -> reference
    distances: 98 zeros. Reference -> prediction: 98 zeros, 4 voxels of B at 15 (x = 20, nearest
    A face at x = 5) and 4 at 16 (x = 21).
    Pooled (98 + 106 = 204 values): 196 zeros then 4x15, 4x16; the 95th percentile sits at
    position 0.95 * 203 = 192.85, between two zeros -> 0 (medpy's answer, CaPTk's rule).
    Max of directed: reference -> prediction has 106 values, position 0.95 * 105 = 99.75
    between sorted[99] = 15 and sorted[100] = 15 -> 15 (MONAI's answer).
    """
    import torch
    from medpy.metric.binary import hd95 as medpy_hd95
    from monai.metrics import compute_hausdorff_distance

    ref = np.zeros((30, 7, 7), bool)
    ref[1:6, 1:6, 1:6] = True
    ref[20:22, 1:3, 1:3] = True
    pred = np.zeros_like(ref)
    pred[1:6, 1:6, 1:6] = True
    pred_to_ref, ref_to_pred = M.directed_surface_distances(pred, ref)
    assert sorted(pred_to_ref) == [0.0] * 98
    assert sorted(ref_to_pred) == [0.0] * 98 + [15.0] * 4 + [16.0] * 4
    assert M.hd95(pred, ref) == 0.0
    assert medpy_hd95(pred, ref) == 0.0
    monai = compute_hausdorff_distance(torch.from_numpy(pred)[None, None],
                                       torch.from_numpy(ref)[None, None], percentile=95)
    assert float(monai) == pytest.approx(15.0)


def test_pooled_percentile_interpolates_by_hand():
    """Two single voxels 10 apart, prediction has only the first: pooled set [0, 0, 10],
    95th percentile at position 1.9 -> 0 + 0.9 * 10 = 9 (max of directed would be 9.5)."""
    ref = np.zeros((14, 3, 3), bool)
    ref[1, 1, 1] = ref[11, 1, 1] = True
    pred = np.zeros_like(ref)
    pred[1, 1, 1] = True
    assert M.hd95(pred, ref) == pytest.approx(9.0)
    assert M.hd95(pred, ref, spacing=(2.0, 1.0, 1.0)) == pytest.approx(18.0)


def test_empty_mask_conventions_by_hand():
    shape = (6, 8, 10)
    empty = np.zeros(shape, bool)
    one = np.zeros(shape, bool)
    one[2:4, 3:5, 4:6] = True
    # both empty: Dice 1, HD95 0, sensitivity 1, specificity 1
    s = M.legacy_scores(empty, empty)
    assert s == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
    # prediction empty, reference not: Dice 0, HD95 = diagonal sqrt(36 + 64 + 100)
    s = M.legacy_scores(empty, one)
    assert s["dice"] == 0.0
    assert s["hd95"] == pytest.approx(math.sqrt(200.0))
    assert s["sensitivity"] == 0.0 and s["specificity"] == 1.0
    # reference empty, prediction not: Dice 0, HD95 diagonal, sensitivity 0 (nothing to find
    # but something found), specificity (480 - 8) / 480
    s = M.legacy_scores(one, empty)
    assert s["dice"] == 0.0 and s["hd95"] == pytest.approx(math.sqrt(200.0))
    assert s["sensitivity"] == 0.0
    assert s["specificity"] == pytest.approx(472 / 480)
    # in mm: diagonal of (6*2, 8*1, 10*0.5) = sqrt(144 + 64 + 25)
    assert M.hd95(empty, one, spacing=(2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(233.0))


def test_reference_filling_the_grid_by_hand():
    """No reference-negative voxel: specificity is 0/0 -> 1, whatever the prediction."""
    full = np.ones((3, 4, 5), bool)
    assert M.legacy_scores(full, full) == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0,
                                           "specificity": 1.0}
    half = full.copy()
    half[:, :2] = False  # 3 x 2 x 5 = 30 of 60 voxels predicted
    s = M.legacy_scores(half, full)
    assert (s["dice"], s["sensitivity"], s["specificity"]) == (2 * 30 / 90, 0.5, 1.0)
    s = M.legacy_scores(np.zeros_like(full), full)
    assert (s["dice"], s["sensitivity"], s["specificity"]) == (0.0, 0.0, 1.0)
    assert s["hd95"] == pytest.approx(math.sqrt(9 + 16 + 25))


def test_one_empty_on_the_brats_grid_is_373_13():
    empty = np.zeros((240, 240, 155), bool)
    one = empty.copy()
    one[100, 100, 70] = True
    assert M.hd95(one, empty) == pytest.approx(373.1287, abs=1e-4)
    assert M.hd95(empty, one) == pytest.approx(373.1287, abs=1e-4)
    # a crop of the grid scored with grid_shape gives the same penalty
    assert M.hd95(one[90:110, 90:110, 60:80], empty[90:110, 90:110, 60:80],
                  grid_shape=(240, 240, 155)) == pytest.approx(373.1287, abs=1e-4)


def test_sensitivity_specificity_by_hand():
    pred = np.zeros((4, 4, 4), bool)
    ref = np.zeros_like(pred)
    ref[0, 0, :4] = True  # 4 voxels
    pred[0, 0, :2] = True  # 2 true positives
    pred[3, 3, 3] = True  # 1 false positive
    c = M.confusion_counts(pred, ref)
    assert c == (2, 1, 2, 64 - 5)
    s = M.legacy_scores(pred, ref)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(59 / 60)
    assert s["dice"] == pytest.approx(2 * 2 / (3 + 4))
    # voxels outside a crop are true negatives
    s = M.legacy_scores(pred, ref, outside_voxels=40)
    assert s["specificity"] == pytest.approx(99 / 100)


@pytest.mark.parametrize(
    "scheme, values, wt, tc, et",
    [
        ("brats2020", [0, 1, 2, 4], [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]),
        ("brats2021", [0, 1, 2, 4], [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]),
        ("brats2023", [0, 1, 2, 3], [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]),
        # MSD: 1 edema, 2 non-enhancing core, 3 enhancing
        ("msd", [0, 1, 2, 3], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]),
    ],
)
def test_regions_by_hand(scheme, values, wt, tc, et):
    for dtype in (np.uint8, np.int16, np.float32, np.float64):
        r = M.regions_from_labels(np.array(values, dtype=dtype), scheme)
        assert r.dtype == bool
        assert r[0].astype(int).tolist() == wt
        assert r[1].astype(int).tolist() == tc
        assert r[2].astype(int).tolist() == et


@pytest.mark.parametrize(
    "scheme, bad", [("brats2023", 4), ("brats2020", 3), ("brats2021", 3), ("brats2020", 5)]
)
def test_labels_outside_the_scheme_name_the_case(scheme, bad):
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = 1
    labels[2, 2, 2] = bad
    with pytest.raises(M.EvaluationError, match=rf"BraTS-GLI-00001-000: prediction: .*\[{bad}\]"):
        M.regions_from_labels(labels, scheme, "BraTS-GLI-00001-000", "prediction")


def test_bad_label_values_are_errors():
    with pytest.raises(M.EvaluationError, match="case7: non-integer"):
        M.regions_from_labels(np.array([0.0, 1.5, 2.0]), "brats2020", "case7")
    with pytest.raises(M.EvaluationError, match="case7: NaN"):
        M.regions_from_labels(np.array([0.0, np.nan]), "brats2020", "case7")
    with pytest.raises(M.EvaluationError, match=r"\[-1\]"):
        M.regions_from_labels(np.array([0, -1, 2], np.int16), "brats2020", "case7")

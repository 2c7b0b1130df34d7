"""``glioseg.data.synthetic.tumour``: tumour geometry, measured on generated cases (labels
nested and present, separate foci, volumes as drawn) and on its helpers by hand computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from glioseg.data import labels as L
from glioseg.data.sites import get_site
from glioseg.data.synthetic.render import generate_case
from glioseg.data.synthetic.tumour import edema_margin, grow, lowest, sphere_radius


def test_labels_nested_and_present():
    n_all = 0
    cases = [generate_case(21, i, "source", 5.0) for i in range(10)]
    for case in cases:
        lab = case.labels
        present = set(np.unique(lab).tolist())
        assert present <= {0, 1, 2, 3}
        brain = case.tissue.sum(0) > 0
        assert not np.any(lab[~brain])  # tumour only inside the brain
        n_all += present == {0, 1, 2, 3}
        assert case.stats["has_et"] == (L.ET in present)
    assert n_all >= 7  # ~10 % of cases have no enhancing tumour
    # the cohort holds the cases BraTS has too: without enhancing tumour, multifocal (two
    # tumour cores or more, counted on the labels as 26-connected components)
    assert any(not c.stats["has_et"] for c in cases)
    assert any(len(_components_ml(np.isin(c.labels, (L.NCR, L.ET)), 5.0)) >= 2 for c in cases)


def _components_ml(mask: np.ndarray, spacing: float) -> list[float]:
    """Volumes (mL) of the 26-connected components of ``mask``, largest first (cc3d)."""
    import cc3d

    lab, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)
    counts = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return sorted((float(c) * spacing**3 / 1000.0 for c in counts), reverse=True)


@pytest.mark.parametrize("site", ["source", "target"])
def test_multifocal_cases_have_separate_foci(site):
    """A population of multifocal tumours (every case multifocal) measured on the labels: two
    tumour cores that do not touch (26-connected TC components, the smaller of at least 1 mL,
    with brain between them), each centred in white matter (its innermost voxel, the maximum
    of its distance transform, lies in tissue that was white matter before the tumour); the
    edema usually apart too (separate WT components); the whole tumour in the site's range."""
    import dataclasses

    import cc3d

    spacing = 4.0
    prof = dataclasses.replace(get_site(site), multifocal=1.0)
    n_wt_apart = 0
    for i in range(6):
        case = generate_case(41, i, prof, spacing)
        tc = np.isin(case.labels, (L.NCR, L.ET))
        wt = case.labels > 0
        tc_ml = _components_ml(tc, spacing)
        assert len(tc_ml) >= 2 and tc_ml[1] >= 1.0, (i, tc_ml)
        lab = cc3d.connected_components(tc.astype(np.uint8), connectivity=26)
        first, second = (np.argsort(-np.bincount(lab.ravel())[1:])[:2] + 1).tolist()
        gap_mm = ndimage.distance_transform_edt(lab != first, sampling=spacing)[lab == second]
        assert gap_mm.min() >= 2 * spacing, i  # at least one voxel of brain between the cores
        for k in (first, second):
            inner = ndimage.distance_transform_edt(np.pad(lab == k, 1))[1:-1, 1:-1, 1:-1]
            centre = np.unravel_index(int(np.argmax(inner)), inner.shape)
            assert case.tissue[2][centre] > 0.5, (i, k)  # white-matter fraction there
        n_wt_apart += len(_components_ml(wt, spacing)) >= 2
        lo, hi = prof.wt_range_ml
        assert lo * 0.8 <= float(wt.sum()) * spacing**3 / 1000.0 <= hi * 1.02
    assert n_wt_apart >= 4, n_wt_apart


def test_sub_regions_are_nested():
    """Necrosis inside an enhancing rim inside edema, measured on the 6-neighbour shells at
    2 mm: what surrounds the necrosis is enhancing tumour (closed rings), what surrounds the
    core is mostly edema."""
    face = ndimage.generate_binary_structure(3, 1)

    def around(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return labels[ndimage.binary_dilation(mask, face) & ~mask]

    for i in range(3):
        case = generate_case(21, i, "source", 2.0)
        lab = case.labels
        core = np.isin(lab, (L.NCR, L.ET))
        assert (around(core, lab) == L.ED).mean() > 0.5, i
        if case.stats["has_et"] and not case.stats["open_ring"]:
            assert (around(lab == L.NCR, lab) == L.ET).mean() > 0.9, i


def test_whole_tumour_volume_matches_draw_and_range():
    for i in range(5):
        case = generate_case(31, i, "source", 3.0)
        wt_ml = (case.labels > 0).sum() * 27 / 1000.0
        lo, hi = get_site("source").wt_range_ml
        assert lo * 0.8 <= wt_ml <= hi * 1.02
        # the drawn volume is reached within 15 % (islands of edema are dropped)
        assert wt_ml == pytest.approx(case.stats["wt_ml_drawn"], rel=0.15)
        # tumour centred in the cerebrum, not at the very top or bottom of the field of view
        zc = np.argwhere(case.labels > 0)[:, 2].mean() * 3.0
        assert 20 < zc < 140


def test_sphere_radius_and_edema_margin_by_hand():
    # a sphere of radius 10 mm holds 4/3 pi 1000 mm^3
    assert sphere_radius(4.0 / 3.0 * math.pi * 1000.0) == pytest.approx(10.0)
    assert sphere_radius(0.0) == 0.0
    # shells of 5 mm around cores of 10 and 4 mm: 4/3 pi ((15^3 - 10^3) + (9^3 - 4^3)) mm^3
    edema = 4.0 / 3.0 * math.pi * ((15**3 - 10**3) + (9**3 - 4**3))
    assert edema_margin([10.0, 4.0], edema) == pytest.approx(5.0, abs=1e-6)
    assert edema_margin([10.0], 0.0) == pytest.approx(0.0, abs=1e-6)


def test_lowest_and_grow_by_hand():
    values = np.array([[5.0, 1.0, 3.0], [0.0, 4.0, 2.0]])
    np.testing.assert_array_equal(lowest(values, 3), [[False, True, False], [True, False, True]])
    assert not lowest(values, 0).any() and lowest(values, 10).all()
    mask = np.zeros((7, 7, 7), bool)
    mask[3, 3, 3] = True
    grown = grow(mask, 2)
    assert grown.sum() == 5**3  # the 5x5x5 cube: at most 2 steps in each axis
    assert grown[1, 5, 1] and not grown[0, 3, 3]

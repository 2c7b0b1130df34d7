"""Label conventions: every scheme's mapping checked value by value, by hand."""

import numpy as np
import pytest

from glioseg.data import labels as L


@pytest.mark.parametrize(
    "scheme, file_values, internal",
    [
        ("brats2020", [0, 1, 2, 4], [0, 1, 2, 3]),
        ("brats2021", [0, 1, 2, 4], [0, 1, 2, 3]),
        ("brats2023", [0, 1, 2, 3], [0, 1, 2, 3]),
        # MSD: 1 edema, 2 non-enhancing, 3 enhancing
        ("msd", [0, 1, 2, 3], [0, 2, 1, 3]),
    ],
)
def test_scheme_round_trip(scheme, file_values, internal):
    f = np.array(file_values, dtype=np.uint8)
    got = L.to_internal(f, scheme)
    assert got.tolist() == internal
    assert L.from_internal(got, scheme).tolist() == file_values


@pytest.mark.parametrize("scheme, bad", [("brats2023", 4), ("brats2020", 3), ("msd", 4)])
def test_values_outside_scheme_are_errors(scheme, bad):
    with pytest.raises(L.LabelError, match=str(bad)):
        L.to_internal(np.array([0, bad]), scheme)
    assert L.unexpected_values(np.array([0, 1, bad]), scheme) == [bad]


def test_regions_by_hand():
    internal = np.array([0, 1, 2, 3])
    r = L.regions_from_labels(internal)
    # WT = {1,2,3}, TC = {1,3}, ET = {3}
    assert r[0].tolist() == [False, True, True, True]
    assert r[1].tolist() == [False, True, False, True]
    assert r[2].tolist() == [False, False, False, True]
    # 2020 file label 4 is ET; 2023 file label 3 is ET
    assert L.file_regions(np.array([4]), "brats2020")[2].tolist() == [True]
    assert L.file_regions(np.array([3]), "brats2023")[2].tolist() == [True]
    # MSD label 1 is edema: in WT only
    assert L.file_regions(np.array([1]), "msd")[:, 0].tolist() == [True, False, False]


def test_labels_from_regions_inverts_and_nests():
    internal = np.random.default_rng(0).integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    assert np.array_equal(L.labels_from_regions(L.regions_from_labels(internal)), internal)
    # ET outside TC/WT still becomes ET (nesting imposed)
    regions = np.zeros((3, 1), bool)
    regions[2, 0] = True
    assert L.labels_from_regions(regions).tolist() == [3]

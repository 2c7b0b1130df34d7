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


@pytest.mark.parametrize("dtype", ["uint8", "int64"])
def test_torch_regions_equal_regions_from_labels(dtype):
    """Every torch path from labels to regions (training targets, the loader, the MONAI
    benchmark pipeline) gives what the pure ``regions_from_labels`` gives, voxel by voxel."""
    import torch

    from glioseg.bench.data import _regions_1ch
    from glioseg.train import data as TD
    from glioseg.train.loop import regions_target

    labels = np.random.default_rng(1).integers(0, 4, size=(3, 5, 6, 7)).astype(dtype)
    expected = np.stack([L.regions_from_labels(x) for x in labels])  # (B, 3, X, Y, Z)
    assert expected.any(axis=(0, 2, 3, 4)).all() and not expected.all()  # every region occurs
    t = torch.from_numpy(labels)
    for got in (regions_target(t), regions_target(t[:, None]),
                torch.stack([_regions_1ch(x[None]) for x in t])):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert np.array_equal(got.numpy(), expected)
    assert np.array_equal(TD.regions_from_labels_np(labels.astype(np.uint8)), expected)
    masks = L.region_masks(t)
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks)
    assert np.array_equal(torch.stack(masks, dim=1).numpy(), expected)


def test_integer_labels_refuses_what_labels_cannot_be():
    got = L.integer_labels(np.array([0.0, 2.0, 4.0], np.float32))
    assert got.dtype == np.int64 and got.tolist() == [0, 2, 4]
    assert L.integer_labels(np.array([True, False])).tolist() == [1, 0]
    ints = np.array([1, 3], np.uint8)
    assert L.integer_labels(ints) is ints
    for bad, words in ((np.array([1.0, np.nan]), "NaN or inf"),
                       (np.array([1.0, 0.5, 0.25]), "non-integer label values (0.25, 0.5)"),
                       (np.array(["a"]), "unsupported type")):
        try:
            L.integer_labels(bad)
        except L.LabelError as exc:
            assert words in str(exc), (words, str(exc))
        else:
            raise AssertionError(f"{bad} accepted")


def test_a_3_in_brats2021_files_hints_at_the_2023_scheme():
    with pytest.raises(L.LabelError, match=r"labels \[3\] are not allowed in the brats2021 "
                                           r"scheme .*3 is ET in the BraTS 2023 / nnU-Net "
                                           r"scheme.*relabel 3 as 4"):
        L.to_internal(np.array([0, 1, 2, 3]), "brats2021")
    with pytest.raises(L.LabelError) as other:  # a 5 is no known scheme's: no such hint
        L.to_internal(np.array([0, 3, 5]), "brats2020")
    assert "nnU-Net" not in str(other.value)
    assert L.scheme_hint([4], "brats2023") == ""
    assert L.scheme_hint([3], "brats2020").endswith("or declare the scheme: --labels brats2023")
    assert L.scheme_hint([3], "brats2021", "--ref-labels").endswith("--ref-labels brats2023")


def test_declared_scheme_names_the_option():
    assert L.declared_scheme(None) is None and L.declared_scheme("msd") == "msd"
    with pytest.raises(L.LabelError, match=r"^--ref-labels 2023: unknown label scheme; known: "
                                           r"brats2020, brats2021, brats2023, msd$"):
        L.declared_scheme("2023", "--ref-labels")

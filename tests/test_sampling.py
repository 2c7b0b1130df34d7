"""Patch sampling, training batches and the loader: bounds, foreground share, seeding.

Volumes encode their own coordinates (channel c = 1 + index along axis c), so a patch shows
exactly which voxels it copied; expectations come from numpy slicing / padding by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from glioseg.data.labels import regions_from_labels
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as C
from glioseg.train.augment import AugmentConfig, draw_params
from glioseg.train.data import (
    DataError,
    _resample_from_case,
    case_split,
    make_loader,
    regions_from_labels_np,
    sample_batch,
)
from glioseg.train.sampling import (
    centred_origin,
    extract_box,
    foreground_centre,
    origin_range,
    random_origin,
    sample_patch,
)

torch.set_num_threads(1)


def coord_image(shape) -> np.ndarray:
    """(4, X, Y, Z) float32: channel c < 3 holds 1 + the voxel index along axis c."""
    idx = np.indices(shape).astype(np.float32) + 1
    return np.concatenate([idx, np.ones((1, *shape), np.float32)])


def build_cache(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Path:
    """Write arrays as a cache with the format writer (no NIfTI, no preprocessing)."""
    for cid, (image, labels) in cases.items():
        shape = list(image.shape[1:])
        C.write_case(root, cid, image, labels, {"case_id": cid, "shape": shape})
    write_json(root / "dataset.json", {
        "format": C.CACHE_FORMAT, "modalities": ["t1", "t1ce", "t2", "flair"],
        "spacing": None, "cases": sorted(cases), "source": "test"})
    return root


def small_tumour_case(shape=(48, 48, 48), centre=(30, 12, 20)) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(shape, np.uint8)
    x, y, z = centre
    labels[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2] = 2
    labels[x, y, z] = 3
    return coord_image(shape), labels


@pytest.fixture()
def cache(tmp_path: Path) -> list[C.CachedCase]:
    root = build_cache(tmp_path / "cache", {
        "big": small_tumour_case(),
        "tiny": (coord_image((5, 6, 4)), np.ones((5, 6, 4), np.uint8)),
        "clean": (coord_image((20, 20, 20)), np.zeros((20, 20, 20), np.uint8)),
    })
    return {c.case_id: c for c in C.open_cache(root)}


def test_extract_box_matches_numpy_padding():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    ref = np.pad(a, ((0, 0), (3, 3), (3, 3), (3, 3)))  # box origin o <-> ref index o + 3
    for origin in [(-2, 1, 3), (2, 3, -3), (0, 0, 0), (-3, -3, -3), (3, 4, 5)]:
        got = extract_box(a, origin, (3, 4, 2))
        o = np.array(origin) + 3
        assert np.array_equal(got, ref[:, o[0]:o[0] + 3, o[1]:o[1] + 4, o[2]:o[2] + 2]), origin
    assert not extract_box(a, (10, 0, 0), (2, 2, 2)).any()


def test_random_patches_in_bounds_with_requested_shape(cache):
    rng = np.random.default_rng(0)
    case = cache["big"]
    for _ in range(50):
        image, labels = sample_patch(case, (16, 8, 12), rng, force_fg=False)
        assert image.shape == (4, 16, 8, 12) and labels.shape == (16, 8, 12)
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        lo = image[:3, 0, 0, 0] - 1  # origin of the patch in the volume
        assert np.all(lo >= 0) and np.all(lo + (16, 8, 12) <= 48)
        ref = np.asarray(case.image)[:, int(lo[0]):int(lo[0]) + 16, int(lo[1]):int(lo[1]) + 8,
                                     int(lo[2]):int(lo[2]) + 12]
        assert np.array_equal(image, ref)


def test_patch_larger_than_volume_is_padded(cache):
    rng = np.random.default_rng(1)
    for _ in range(10):
        image, labels = sample_patch(cache["tiny"], (8, 8, 8), rng, force_fg=False)
        assert image.shape == (4, 8, 8, 8)
        assert (image[3] == 1).sum() == 5 * 6 * 4  # the whole volume, once
        assert labels.sum() == 5 * 6 * 4 and np.all(labels[image[3] == 0] == 0)
    origins = {tuple(random_origin((5, 6, 4), (8, 8, 8), rng)) for _ in range(200)}
    assert all(-3 <= o[0] <= 0 and -2 <= o[1] <= 0 and -4 <= o[2] <= 0 for o in origins)
    assert len(origins) > 20  # padding position varies


def test_border_lets_patches_reach_beyond_the_volume(cache):
    # origins by hand: volume 48, patch 16 -> inside [0, 32]; border 0.25 -> 4 voxels more
    lo, hi = origin_range((48, 48, 48), (16, 8, 12), 0.25)
    assert lo.tolist() == [-4, -2, -3] and hi.tolist() == [36, 42, 39]
    lo, hi = origin_range((5, 6, 4), (8, 8, 8), 0.5)  # smaller than the patch: 4 more each way
    assert lo.tolist() == [-7, -6, -8] and hi.tolist() == [4, 4, 4]
    assert centred_origin((47, 0, 20), (48, 48, 48), (16, 16, 16), 0.5).tolist() == [39, -8, 12]
    assert centred_origin((47, 0, 20), (48, 48, 48), (16, 16, 16)).tolist() == [32, 0, 12]
    case = cache["big"]
    padded = np.pad(np.asarray(case.image), ((0, 0), (8, 8), (8, 8), (8, 8)))
    padded_labels = np.pad(np.asarray(case.labels), 8)
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    inside = []
    for _ in range(300):
        image, labels = sample_patch(case, (16, 16, 16), rng, force_fg=False, border=0.5)
        o = random_origin(case.shape, (16, 16, 16), twin, 0.5) + 8  # the same draw
        assert np.all(o >= 0) and np.all(o <= 48)  # origin in [-8, 40] of the volume
        box = (slice(o[0], o[0] + 16), slice(o[1], o[1] + 16), slice(o[2], o[2] + 16))
        assert np.array_equal(image, padded[(slice(None), *box)])
        assert np.array_equal(labels, padded_labels[box])
        inside.append(int((image[3] > 0).sum()))  # channel 3 is 1 inside the volume
    # some patches are more than half background, some wholly inside, none wholly outside
    assert min(inside) < 16**3 // 2 and max(inside) == 16**3 and min(inside) > 0


def test_forced_patches_are_centred_on_tumour(cache):
    rng = np.random.default_rng(2)
    for _ in range(30):
        image, labels = sample_patch(cache["big"], (8, 8, 8), rng, force_fg=True)
        assert labels.any() and labels[4, 4, 4] > 0  # centre voxel is tumour
    # label chosen uniformly among those present: ET (1 voxel) as often as edema (26 voxels)
    picks = [int(np.asarray(cache["big"].labels)[tuple(foreground_centre(cache["big"], rng))])
             for _ in range(400)]
    assert 0.4 < picks.count(3) / 400 < 0.6 and set(picks) == {2, 3}
    # a case without tumour falls back to a uniform patch
    image, labels = sample_patch(cache["clean"], (8, 8, 8), rng, force_fg=True)
    assert image.shape == (4, 8, 8, 8) and not labels.any()


def test_one_third_of_batch_patches_hold_tumour(cache):
    rng = np.random.default_rng(3)
    cases = [cache["big"]]
    n_tumour = 0
    n = 0
    for _ in range(100):
        _, regions = sample_batch(cases, (8, 8, 8), 3, rng, oversample_fg=1 / 3)
        n_tumour += int((regions[:, 0].flatten(1).amax(1) > 0).sum())
        n += 3
    # forced share 1/3; a uniform 8^3 patch meets the 3^3 tumour with p = (10/41)^3 = 1.5 %
    assert 0.26 < n_tumour / n < 0.42


def test_spatial_augmentation_moves_image_and_labels_together(tmp_path: Path):
    # image channel 3 encodes the labels: after exact flips / 90-degree turns the regions
    # must still be the regions of the (moved) image's label channel, voxel for voxel.
    rng = np.random.default_rng(4)
    shape = (20, 20, 14)
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    image = coord_image(shape)
    image[3] = labels + 1.0
    cases = C.open_cache(build_cache(tmp_path / "c", {"a": (image, labels)}))
    cfg = AugmentConfig(p_flip=0.5, p_rot90=0.7, p_rotate=0, p_scale=0, p_noise=0, p_blur=0,
                        p_brightness=0, p_contrast=0, p_gamma=0)
    moved = 0
    for _ in range(10):
        img, reg = sample_batch(cases, (8, 8, 6), 2, rng, 0.0, cfg)
        for n in range(2):
            lab = (img[n, 3].numpy() - 1).astype(np.uint8)
            assert np.array_equal(reg[n].numpy().astype(bool), regions_from_labels(lab))
            moved += int(img[n, 0, 1, 0, 0] < img[n, 0, 0, 0, 0] or
                         img[n, 0, 0, 1, 0] != img[n, 0, 0, 0, 0])
    assert moved > 3  # some patches were flipped or turned


def test_loader_batches_and_rank_seeding(cache):
    cases = [cache["big"]]
    kw = dict(patch_size=(8, 8, 8), batch_size=2, batches_per_epoch=2, pin_memory=False,
              augment_cfg=AugmentConfig())

    def first(rank: int, seed: int = 0, world: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(make_loader(cases, seed=seed, rank=rank, world_size=world, **kw)))

    img0, reg0 = first(0)
    assert img0.shape == (2, 4, 8, 8, 8) and img0.dtype == torch.float32
    assert reg0.shape == (2, 3, 8, 8, 8) and reg0.dtype == torch.float32
    again = first(0)
    assert torch.equal(img0, again[0]) and torch.equal(reg0, again[1])  # reproducible
    assert not torch.equal(img0, first(1)[0])  # another rank draws other patches
    assert not torch.equal(img0, first(0, seed=1)[0])
    loader = make_loader(cases, seed=0, rank=0, world_size=1, **kw)
    loader.dataset.set_epoch(1)
    assert not torch.equal(img0, next(iter(loader))[0])  # another epoch too
    with pytest.raises(DataError, match="rank"):
        make_loader(cases, seed=0, rank=2, world_size=2, **kw)
    with pytest.raises(DataError, match="without labels"):
        unlabelled = C.CachedCase(cases[0].path, {**cases[0].meta, "has_labels": False})
        make_loader([unlabelled], seed=0, **kw)


def test_loader_workers_draw_different_patches(cache):
    loader = make_loader([cache["big"]], (8, 8, 8), 2, seed=0, num_workers=2,
                         batches_per_epoch=2, pin_memory=False)
    a, b = [img for img, _ in loader]
    assert len(loader) == 2 and not torch.equal(a, b)


def test_case_split():
    ids = [f"c{i:02d}" for i in range(10)]
    train, val = case_split(ids, 3, seed=0)
    assert len(val) == 3 and len(train) == 7 and sorted(train + val) == ids
    assert case_split(list(reversed(ids)), 3, seed=0) == (train, val)
    assert any(case_split(ids, 3, seed=s)[1] != val for s in range(1, 5))
    assert case_split(ids, 0, seed=0) == (ids, [])
    with pytest.raises(DataError, match="n_val"):
        case_split(ids, 10, seed=0)


def test_regions_match_labels_module():
    labels = np.random.default_rng(5).integers(0, 4, (2, 5, 6, 7)).astype(np.uint8)
    regions = regions_from_labels_np(labels)
    assert regions.dtype == np.float32 and regions.shape == (2, 3, 5, 6, 7)
    for n in range(2):
        assert np.array_equal(regions[n].astype(bool), regions_from_labels(labels[n]))


def test_rotated_patch_matches_scipy_on_the_whole_volume(tmp_path: Path):
    # reading only the clipped box must equal resampling the whole zero-extended volume
    shape = (48, 40, 36)
    blocks = (np.indices(shape) // 3).sum(0) % 4 + 1  # labels 1..4 -> 0..3 in blocks of 3
    labels = (blocks - 1).astype(np.uint8)
    case = C.open_cache(build_cache(tmp_path / "c", {"a": (coord_image(shape), labels)}))[0]
    vol = np.asarray(case.image)
    size = np.array([12, 10, 8])
    cfg = AugmentConfig(p_rotate=1.0, p_scale=1.0, p_flip=0.5)
    params = draw_params(np.random.default_rng(6), 4, 4, size, cfg)
    c_out = (size - 1) / 2
    for n, origin in enumerate([(0, 0, 0), (40, 30, 30), (18, 20, 20), (-3, 36, 5)]):
        img, lab = _resample_from_case(case, np.array(origin), size, params, n)
        m = params.matrix[n]
        kw = dict(offset=np.array(origin) + c_out - m @ c_out, output_shape=tuple(size),
                  mode="grid-constant", cval=0.0)
        for ch in range(4):
            ref = ndimage.affine_transform(vol[ch], m, order=1, **kw)
            np.testing.assert_allclose(img[ch].numpy(), ref, atol=1e-4)
        ref_lab = ndimage.affine_transform(np.asarray(case.labels), m, order=0, **kw)
        assert (lab.numpy() == ref_lab).mean() > 0.99 and len(np.unique(ref_lab)) == 4


def test_cached_case_keeps_its_maps_but_pickles_without_them(cache):
    import pickle

    case = cache["big"]
    assert case.image is case.image and case.labels is case.labels  # one map per array
    blob = pickle.dumps(case)
    assert len(blob) < 10_000  # paths and metadata, not the 4 x 48^3 float32 voxels
    clone = pickle.loads(blob)
    assert np.array_equal(clone.image, case.image) and clone.image is not case.image

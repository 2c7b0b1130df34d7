"""Augmentation: reproducible draws, spatial transforms checked by hand and against scipy,
intensity transforms against their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from glioseg.train import augment as A

torch.set_num_threads(1)

NONE = dict(p_flip=0.0, p_rot90=0.0, p_rotate=0.0, p_scale=0.0, p_elastic=0.0, p_noise=0.0,
            p_blur=0.0, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)


def identity_params(b: int = 1, c: int = 1) -> A.AugmentParams:
    return A.draw_params(np.random.default_rng(0), b, c, (4, 4, 4), A.AugmentConfig(**NONE))


def test_same_generator_state_same_batch():
    cfg = A.AugmentConfig(p_rotate=0.5, p_scale=0.5, p_noise=0.5, p_elastic=0.5, p_blur=0.5)
    x = torch.randn(4, 2, 32, 32, 32)
    lab = torch.randint(0, 4, (4, 32, 32, 32), dtype=torch.uint8)

    def run(seed: int):
        p = A.draw_params(np.random.default_rng(seed), 4, 2, (8, 8, 8), cfg)
        ext = A.required_extent(p, (8, 8, 8))
        assert max(ext) <= 32
        crop = tuple(slice((32 - e) // 2, (32 - e) // 2 + e) for e in ext)
        return A.augment_batch(x[(slice(None), slice(None), *crop)].clone(),
                               lab[(slice(None), *crop)].clone(), p, (8, 8, 8))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_flip_by_hand_on_asymmetric_volume():
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    lab = (vol.astype(np.int64) % 4).astype(np.uint8)
    p = identity_params()
    p.matrix[0] = np.diag([1.0, -1.0, 1.0])  # mirror axis 1
    img, lb = A.augment_spatial(torch.from_numpy(vol)[None, None],
                                torch.from_numpy(lab)[None], p, (3, 4, 5))
    for i, j, k in np.ndindex(3, 4, 5):
        assert img[0, 0, i, j, k] == vol[i, 3 - j, k]
        assert lb[0, i, j, k] == lab[i, 3 - j, k]


def test_rot90_by_hand_same_for_image_and_labels():
    vol = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    lab = (vol.astype(np.int64) % 4).astype(np.uint8)
    p = identity_params()
    p.matrix[0] = A.rot90_matrix(1, (0, 1))
    img, lb = A.augment_spatial(torch.from_numpy(vol)[None, None],
                                torch.from_numpy(lab)[None], p, (4, 4, 3))
    # out[u] = in[M u] about the centre; M = [[0,-1],[1,0]] in plane (0, 1):
    # out[i, j, k] = in[3 - j, i, k]
    for i, j, k in np.ndindex(4, 4, 3):
        assert img[0, 0, i, j, k] == vol[3 - j, i, k]
        assert lb[0, i, j, k] == lab[3 - j, i, k]


def test_exact_path_equals_grid_sample_path_and_inverse_view():
    rng = np.random.default_rng(1)
    cfg = A.AugmentConfig(**{**NONE, "p_flip": 0.5, "p_rot90": 1.0})
    x = torch.randn(3, 2, 6, 6, 4)
    for _ in range(10):
        p = A.draw_params(rng, 3, 2, (6, 6, 4), cfg)
        assert p.exact().all()
        fast, _ = A.augment_spatial(x, None, p, (6, 6, 4))
        slow, _ = A.resample_patches(x, None, p, [0, 1, 2], (6, 6, 4))
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
        for n in range(3):  # writing the input through inverse_view gives the same patch
            out = np.zeros((2, 6, 6, 4), np.float32)
            A.inverse_view(out, p.matrix[n])[...] = x[n].numpy()
            np.testing.assert_array_equal(out, fast[n].numpy())


def test_rotation_scale_matches_scipy_affine_transform():
    rng = np.random.default_rng(2)
    cfg = A.AugmentConfig(**{**NONE, "p_rotate": 1.0, "p_scale": 1.0, "p_flip": 0.5})
    size = (10, 12, 8)
    p = A.draw_params(rng, 2, 1, size, cfg)
    assert not p.exact().any()
    ext = A.required_extent(p, size)
    vol = rng.random((2, 1, *ext)).astype(np.float32)
    lab = rng.integers(0, 4, (2, *ext)).astype(np.uint8)
    img, lb = A.augment_spatial(torch.from_numpy(vol), torch.from_numpy(lab), p, size)
    c_in, c_out = (np.array(ext) - 1) / 2, (np.array(size) - 1) / 2
    for n in range(2):
        m = p.matrix[n]
        kw = dict(offset=c_in - m @ c_out, output_shape=size, mode="constant")
        ref = ndimage.affine_transform(vol[n, 0], m, order=1, **kw)
        np.testing.assert_allclose(img[n, 0].numpy(), ref, atol=1e-5)
        ref_lab = ndimage.affine_transform(lab[n], m, order=0, **kw)
        assert (lb[n].numpy() == ref_lab).mean() > 0.99  # ties at .5 may round differently
    # the box is large enough: every output voxel sampled real input (no zero padding)
    assert (img > 0).all()


def test_required_extent():
    p = identity_params(2)
    assert A.required_extent(p, (10, 9, 8)) == (10, 9, 8)
    p.matrix[1] = A.rotation_matrix([0.0, 0.0, np.pi / 4])  # 45 degrees in plane (0, 1)
    ext = A.required_extent(p, (10, 10, 8))
    assert ext[0] >= 9 * np.sqrt(2) + 1 and ext[2] == 8 and (ext[0] - 10) % 2 == 0
    assert A.required_extent(p, (10, 10, 8), idx=[0]) == (10, 10, 8)


def test_intensity_transforms_by_formula():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(1, 4, 6, 6, 6)).astype(np.float32))
    p = identity_params(1, 4)
    p.brightness[0] = [1.2, 1.0, 1.0, 1.0]
    p.contrast[0] = [1.0, 0.5, 1.0, 1.0]
    p.gamma[0] = [1.0, 1.0, 1.3, 1.0]
    y = A.augment_intensity(x.clone(), p)
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(y[0, 0].numpy(), xn[0, 0] * 1.2, rtol=1e-6)
    m = xn[0, 1].mean()
    ref = np.clip((xn[0, 1] - m) * 0.5 + m, xn[0, 1].min(), xn[0, 1].max())
    np.testing.assert_allclose(y[0, 1].numpy(), ref, atol=1e-5)
    g = y[0, 2].numpy().astype(np.float64)
    assert g.mean() == pytest.approx(xn[0, 2].mean(), abs=1e-4)
    assert g.std(ddof=1) == pytest.approx(xn[0, 2].std(ddof=1), rel=1e-4)
    lo, span = xn[0, 2].min(), np.ptp(xn[0, 2])
    gam = ((xn[0, 2] - lo) / span) ** 1.3
    assert np.corrcoef(g.ravel(), gam.ravel())[0, 1] > 0.9999  # gamma curve, then restandardised
    assert torch.equal(y[0, 3], x[0, 3])  # untouched channel


def test_noise_and_blur():
    x = torch.zeros(1, 2, 16, 16, 16)
    p = identity_params(1, 2)
    p.noise_std[0] = [0.5, 0.0]
    y = A.augment_intensity(x.clone(), p)
    assert float(y[0, 0].std()) == pytest.approx(0.5, rel=0.05) and not y[0, 1].any()
    v = np.zeros((9, 9, 9), np.float32)
    v[4, 4, 4] = 1
    ref = ndimage.gaussian_filter(v, 1.0, mode="mirror", truncate=3.0)
    np.testing.assert_allclose(A._gaussian_blur(torch.from_numpy(v), 1.0).numpy(), ref,
                               atol=1e-6)
    # the torch path (used on GPUs; here forced by a volume too thin for scipy's path) agrees
    thin = torch.from_numpy(v[3:6, 3:6])
    torch_path = A._gaussian_blur(thin, 1.0).numpy()
    np.testing.assert_allclose(torch_path, ndimage.gaussian_filter(
        v[3:6, 3:6], 1.0, mode="nearest", truncate=3.0), atol=1e-6)


def test_from_switches():
    cfg = A.AugmentConfig.from_switches(flip=False, rotate_scale=True, intensity=False,
                                        noise=False)
    assert cfg.p_flip == 0 and cfg.p_rotate > 0 and cfg.p_gamma == 0 and cfg.p_noise == 0
    assert cfg.p_elastic == 0  # off unless asked for, as in nnU-Net v2
    on = A.AugmentConfig.from_switches(rotate_scale=False, elastic=True)
    assert on.p_elastic == A.P_ELASTIC_ON > 0 and on.p_rotate == 0 and on.p_scale == 0
    rng = np.random.default_rng(0)
    params = A.draw_params(rng, 200, 1, np.array([8, 8, 8]), on)
    assert params.elastic is not None  # drawn, and for about P_ELASTIC_ON of the patches
    moved = np.abs(params.elastic).reshape(200, -1).max(1) > 0
    assert 0.1 < moved.mean() < 0.3


def test_config_switches_elastic_on():
    from glioseg.train.config import load_config

    cfg = load_config("small", ["data.aug_elastic=true"])
    assert cfg.data.aug_elastic and not load_config("small").data.aug_elastic


def test_elastic_constant_field_is_a_shift_by_hand():
    p = identity_params(1, 1)
    p.elastic = np.zeros((1, 3, 3, 3, 3), np.float32)
    p.elastic[0, 0] = 1.0  # every control point moves +1 voxel along axis 0
    assert not p.exact().any()
    size = (4, 5, 3)
    ext = A.required_extent(p, size)
    assert ext == (6, 7, 5)
    vol = np.random.default_rng(4).random(ext).astype(np.float32)
    img, _ = A.augment_spatial(torch.from_numpy(vol)[None, None], None, p, size)
    # v = o - (p-1)/2 + d + (E-1)/2 = o + 1 + d  ->  out[i, j, k] = in[i + 2, j + 1, k + 1]
    np.testing.assert_allclose(img[0, 0].numpy(), vol[2:6, 1:6, 1:4], atol=1e-5)

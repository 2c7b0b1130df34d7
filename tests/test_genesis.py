"""Models Genesis corruptions: checked against properties computed by hand."""

import numpy as np

from glioseg.transfer import genesis as G

OFF = G.GenesisConfig(nonlinear_rate=0, shuffle_rate=0, paint_rate=0)


def _patch(seed=0, shape=(2, 12, 10, 8)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_no_corruption_is_identity_inside_clip():
    x = _patch()
    p = G.draw_params(x.shape[1:], np.random.default_rng(1), OFF)
    np.testing.assert_allclose(G.apply(x, p, OFF), np.clip(x, -5, 5), atol=1e-5)


def test_diagonal_bezier_is_identity_and_inversion_flips():
    x = _patch()
    p = G.GenesisParams(curve=np.array([[0, 0], [1 / 3, 1 / 3], [2 / 3, 2 / 3], [1, 1]]))
    np.testing.assert_allclose(G.apply(x, p), x, atol=1e-3)
    p.invert = True
    np.testing.assert_allclose(G.apply(x, p), -x, atol=1e-3)  # 1 - u in [0,1] is -z


def test_shuffle_permutes_values_within_each_block_only():
    x = _patch()
    p = G.GenesisParams(blocks=[((2, 3, 1), (4, 3, 2), 7)])
    y = G.apply(x, p)
    inside = (slice(None), slice(2, 6), slice(3, 6), slice(1, 3))
    outside = np.ones(x.shape, bool)
    outside[inside] = False
    np.testing.assert_allclose(y[outside], x[outside], atol=1e-5)
    for c in range(x.shape[0]):  # same multiset per channel, different order
        np.testing.assert_allclose(np.sort(y[inside][c].ravel()), np.sort(x[inside][c].ravel()), atol=1e-5)
    assert not np.allclose(y[inside], x[inside])
    # the same permutation is applied to every channel (voxels move as a whole)
    moved = y[inside].reshape(2, -1)
    orig = x[inside].reshape(2, -1)
    idx = [int(np.argmin(np.abs(orig[0] - v))) for v in moved[0]]
    np.testing.assert_allclose(moved[1], orig[1][idx], atol=1e-5)


def test_outpainting_keeps_the_box_and_replaces_the_rest():
    x = _patch()
    p = G.GenesisParams(outpaint_box=((1, 1, 1), (5, 4, 3)), noise_seed=3)
    y = G.apply(x, p)
    box = (slice(None), slice(1, 6), slice(1, 5), slice(1, 4))
    np.testing.assert_allclose(y[box], x[box], atol=1e-5)
    mask = np.ones(x.shape, bool)
    mask[box] = False
    assert np.abs(y[mask] - x[mask]).mean() > 1.0  # noise spans [-5, 5]
    assert y.min() >= -5 and y.max() <= 5


def test_same_generator_same_corruption():
    x = _patch(shape=(2, 16, 16, 16))
    a = G.corrupt_batch(x[None], np.random.default_rng(5))
    b = G.corrupt_batch(x[None], np.random.default_rng(5))
    c = G.corrupt_batch(x[None], np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)

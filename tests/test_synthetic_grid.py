"""``glioseg.data.synthetic.grid``: the BraTS grid at any spacing and the separable
interpolation the generator's smooth fields are made of.

References: the BraTS conventions (grid, affine) written out, and scipy's own interpolators
on the same node positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from glioseg.data.synthetic.grid import (
    SynthError,
    check_spacing,
    grid_affine,
    grid_shape,
    separable_linear,
    upsample,
)


def test_grid_and_affine_follow_brats():
    assert grid_shape(1.0) == (240, 240, 155)
    assert grid_shape(2.0) == (120, 120, 78)  # ceil(155 / 2) = 78
    assert grid_shape(3.0) == (80, 80, 52)
    expected = np.array([[-2, 0, 0, 0], [0, -2, 0, 239], [0, 0, 2, 0], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(grid_affine(2.0), expected)


def test_upsample_matches_scipy_cubic_spline():
    from scipy.interpolate import CubicSpline

    rng = np.random.default_rng(0)
    ctrl = rng.standard_normal((4, 5, 6))
    out = upsample(ctrl, (10, 13, 17))
    # independent reference: interpolate axis by axis with scipy on the same node positions
    ref = ctrl
    for axis, n in enumerate((10, 13, 17)):
        xc = np.linspace(0, n - 1, ref.shape[axis])
        ref = CubicSpline(xc, ref, axis=axis)(np.arange(n))
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_allclose(out[0, 0, 0], ctrl[0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(out[-1, -1, -1], ctrl[-1, -1, -1], atol=1e-5)


def test_separable_linear_matches_scipy_order_1():
    """Linear interpolation on an outer-product grid of fractional indices is scipy's
    ``map_coordinates(order=1)`` at the same points (inside the array)."""
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((5, 6, 7))
    pos = [np.array([0.0, 1.25, 3.5, 4.0]), np.array([0.5, 2.0, 4.75]), np.array([0.0, 6.0, 2.2])]
    out = separable_linear(arr, pos)
    grid = np.meshgrid(*pos, indexing="ij")
    ref = ndimage.map_coordinates(arr, grid, order=1)
    assert out.shape == (4, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("spacing", [0.4, 8.5])
def test_spacing_outside_half_to_8_mm_is_refused(spacing):
    check_spacing(0.5)
    check_spacing(8.0)
    with pytest.raises(SynthError, match="between 0.5 and 8 mm"):
        check_spacing(spacing)

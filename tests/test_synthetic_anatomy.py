"""``glioseg.data.synthetic.anatomy``: the MNI152 template files and the sampling of the
template onto a case's grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from glioseg.data.nifti import load_volume
from glioseg.data.synthetic import anatomy
from glioseg.data.synthetic.anatomy import TEMPLATE_FILES, load_template, template_dir, trilinear
from glioseg.data.synthetic.grid import SynthError


def test_nilearn_ships_the_template_files_where_the_generator_reads_them():
    """The generator reads nilearn's MNI152 files by name, without importing nilearn: a
    nilearn release that moves them must show here first."""
    folder = template_dir()
    for name in TEMPLATE_FILES.values():
        data, header = load_volume(folder / name)
        assert data.shape == (197, 233, 189) and header.spacing == (1.0, 1.0, 1.0), name
        assert float(data.max()) > 0, name


def test_a_moved_template_file_is_a_clear_error(monkeypatch, tmp_path):
    from importlib.metadata import version

    moved = tmp_path / "data"
    moved.mkdir()
    real = template_dir()
    first, *rest = TEMPLATE_FILES.values()
    for name in rest:  # every file but the first is where it was
        (moved / name).symlink_to(real / name)
    monkeypatch.setattr(anatomy, "template_dir", lambda: moved)
    load_template.cache_clear()
    try:
        with pytest.raises(SynthError) as info:
            load_template()
    finally:
        load_template.cache_clear()
    msg = str(info.value)
    assert first in msg and str(moved) in msg  # the missing file and where it was looked for
    assert f"nilearn {version('nilearn')}" in msg  # the installed version


def test_trilinear_matches_scipy_order_1_with_zero_outside():
    """One gather per corner for all channels gives, channel by channel, scipy's
    ``map_coordinates(order=1, mode="constant")``: 0 outside the volume."""
    rng = np.random.default_rng(2)
    stack = rng.random((6, 5, 4, 3)).astype(np.float32)
    pts = np.array([[0.0, 2.5, 5.0, 1.2, -0.5, 6.5, 3.0],
                    [0.0, 1.5, 4.0, 3.9, 2.0, 1.0, 4.5],
                    [0.0, 0.25, 3.0, 2.7, 1.0, 1.0, 1.0]])
    out = trilinear(stack, pts)
    assert out.shape == (7, 3) and out.dtype == np.float32
    for c in range(3):
        ref = ndimage.map_coordinates(stack[..., c], pts, order=1, mode="constant", cval=0.0)
        ref[~np.all((pts >= 0) & (pts <= np.array(stack.shape[:3])[:, None] - 1), axis=0)] = 0.0
        np.testing.assert_allclose(out[:, c], ref, atol=1e-6)
    assert np.all(out[4:] == 0.0)  # the last three points lie outside (x < 0, x > 5, y > 4)

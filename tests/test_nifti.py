"""data/nifti.py orientation helpers: reorient to axis codes and back, world positions kept."""

from __future__ import annotations

import numpy as np
import pytest

from glioseg.data.nifti import (
    NiftiError,
    axis_codes,
    invert_orientation,
    orientation_to,
    reorient,
    reorient_spacing,
)

LPS = np.array([[-2.0, 0, 0, 120], [0, -1.5, 0, 90], [0, 0, 3.0, -40], [0, 0, 0, 1]])


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("A", "S", "L"), ("I", "R", "P"),
                                   ("L", "P", "S")])
def test_reorient_keeps_every_voxel_at_its_world_position(codes) -> None:
    from nibabel.orientations import inv_ornt_aff

    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    ornt = orientation_to(LPS, codes)
    moved = reorient(image, ornt)
    new_affine = LPS @ inv_ornt_aff(ornt, image.shape[1:])
    assert axis_codes(new_affine) == codes
    for ijk in ((0, 0, 0), (4, 1, 6), (2, 5, 3)):  # same value at the same world point
        x = _world(LPS, np.array(ijk, float))
        new_ijk = np.linalg.solve(new_affine[:3, :3], x - new_affine[:3, 3]).round().astype(int)
        np.testing.assert_array_equal(moved[(slice(None), *new_ijk)], image[(slice(None), *ijk)])
    np.testing.assert_array_equal(reorient(moved, invert_orientation(ornt)), image)
    np.testing.assert_array_equal(reorient(moved[0], invert_orientation(ornt)), image[0])
    assert reorient_spacing((2.0, 1.5, 3.0), ornt) == tuple(
        abs(float(v)) for v in np.linalg.norm(new_affine[:3, :3], axis=0))


def test_identity_and_bad_codes() -> None:
    image = np.zeros((5, 6, 7), np.float32)
    assert reorient(image, orientation_to(LPS, ("L", "P", "S"))) is image
    with pytest.raises(NiftiError, match="axis codes"):
        orientation_to(LPS, ("L", "P", "X"))

"""The BraTS grid of the synthetic cohorts and the smooth fields drawn on it.

The grid is the BraTS SRI24 one (240 x 240 x 155, 1 mm, LPS arrays, affine
``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0]]``); at spacing ``s`` it is ``ceil(240/s)`` etc. and the
affine is scaled. Smooth random fields come from small control grids upsampled separably
(three small matrix products), which is what keeps a 1 mm case to about a second or two;
``separable_linear`` does the same with linear weights at arbitrary positions.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline

from glioseg.errors import GliosegError

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE = np.array(
    [[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=np.float64
)


class SynthError(GliosegError, ValueError):
    """Bad arguments to the generator or an output folder it must not overwrite."""


def grid_shape(spacing: float) -> tuple[int, int, int]:
    """Grid of the BraTS field of view at ``spacing`` mm: ``ceil(240/s), ceil(240/s), ceil(155/s)``."""
    return tuple(int(math.ceil(n / spacing - 1e-9)) for n in BRATS_SHAPE)  # type: ignore[return-value]


def grid_affine(spacing: float) -> np.ndarray:
    """BraTS affine with its voxel axes scaled by ``spacing`` (voxel 0 stays at BraTS voxel 0)."""
    aff = BRATS_AFFINE.copy()
    aff[:3, :3] *= spacing
    return aff


@lru_cache(maxsize=64)
def _interp_matrix(n_ctrl: int, n_out: int, kind: str = "cubic") -> np.ndarray:
    """``(n_out, n_ctrl)`` float32 weights interpolating ``n_ctrl`` evenly spread control points."""
    if n_ctrl == 1:
        return np.ones((n_out, 1), np.float32)
    xc = np.linspace(0.0, n_out - 1.0, n_ctrl)
    xo = np.arange(n_out, dtype=np.float64)
    if kind == "linear" or n_ctrl < 4:
        m = np.stack([np.interp(xo, xc, np.eye(n_ctrl)[i]) for i in range(n_ctrl)], axis=1)
    else:
        m = CubicSpline(xc, np.eye(n_ctrl), axis=0)(xo)
    return np.ascontiguousarray(m, dtype=np.float32)


def upsample(
    ctrl: np.ndarray,
    shape: tuple[int, int, int],
    kind: str = "cubic",
    region: tuple[slice, slice, slice] | None = None,
) -> np.ndarray:
    """Separable upsampling of a small control grid ``(a, b, c)`` to ``shape``, float32.

    The control points span the whole output (first and last voxel); three matrix products.
    ``region``: evaluate only these slices of the output (same field, fewer voxels).
    """
    a, b, c = ctrl.shape
    mats = [_interp_matrix(n, s, kind) for n, s in zip((a, b, c), shape, strict=True)]
    if region is not None:
        mats = [m[r] for m, r in zip(mats, region, strict=True)]
    mx, my, mz = mats
    out_shape = (mx.shape[0], my.shape[0], mz.shape[0])
    t = np.tensordot(mx, ctrl.astype(np.float32), axes=(1, 0))  # (X, b, c)
    t = np.einsum("yb,xbc->xyc", my, t)  # (X, Y, c)
    return (t.reshape(-1, c) @ mz.T).reshape(out_shape)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], step_vox: float
) -> np.ndarray:
    """Smooth random field of unit-ish amplitude, control points every ``step_vox`` voxels."""
    n = tuple(max(2, int(round(s / max(step_vox, 1e-3))) + 1) for s in shape)
    return upsample(rng.standard_normal(n), shape)


def linear_rows(pos: np.ndarray, n: int) -> np.ndarray:
    """``(len(pos), n)`` float32 linear-interpolation weights at fractional indices ``pos``."""
    pos = np.clip(pos, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(pos).astype(int), max(n - 2, 0))
    w = (pos - i0).astype(np.float32)
    m = np.zeros((len(pos), n), np.float32)
    m[np.arange(len(pos)), i0] = 1.0 - w
    if n > 1:
        m[np.arange(len(pos)), i0 + 1] += w
    return m


def separable_linear(arr: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """Linear interpolation of ``arr`` ``(a, b, c)`` at the per-axis fractional indices
    ``positions`` (outer product grid), float32 ``(len(p0), len(p1), len(p2))``."""
    mats = [linear_rows(np.asarray(p, np.float64), n)
            for p, n in zip(positions, arr.shape, strict=True)]
    t = np.tensordot(mats[0], arr.astype(np.float32), axes=(1, 0))
    t = np.einsum("yb,xbc->xyc", mats[1], t)
    return (t.reshape(-1, arr.shape[2]) @ mats[2].T).reshape(
        mats[0].shape[0], mats[1].shape[0], mats[2].shape[0])


def check_spacing(spacing: float) -> None:
    """Refuse a voxel size outside 0.5 .. 8 mm."""
    if not 0.5 <= spacing <= 8.0:
        raise SynthError(f"spacing must be between 0.5 and 8 mm, got {spacing}")

"""Realistic synthetic BraTS-like cohorts: anatomy from MNI152, tumours, site effects.

Site profiles (``glioseg.data.sites``): ``source`` (clean BraTS centres), ``target`` (a
low-resource site, calibrated so that a well-trained source model loses 17% of its mean Dice
on it, within the ~20% published for BraTS 2021 -> BraTS-SSA transfer, arXiv 2412.14100; see
``docs/synthetic-sites.md``) and ``target-severe`` (a harsh shift: 52% lost).

Recipe (in the spirit of SynthSeg / lab2im, Billot et al. 2023, and of Hu et al. 2023):

1. Anatomy: the MNI152 2009 T1 template with its grey- and white-matter maps, shipped inside
   the nilearn wheel (read offline). Brain mask = T1 > 0.2 max (as nilearn does), CSF =
   clip(mask - GM - WM, 0, 1). Each case draws a random affine (a few % scale, a few degrees)
   and a smooth elastic warp, and is resampled onto the BraTS SRI24 grid (240 x 240 x 155,
   1 mm, LPS arrays, affine ``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0]]``; at spacing ``s`` the grid
   is ``ceil(240/s)`` etc. and the affine is scaled).
2. Tumour: one or two lesions centred in supratentorial deep white matter (two: far enough
   apart for separate cores, and separate edema where the brain has room); a noise-perturbed,
   randomly rotated ellipsoidal core (exact volume), necrosis inside an enhancing rim of
   2-6 mm (sometimes open, ~10 % of cases without enhancement), mass effect (radial backward
   warp faded near the brain surface), edema spread from the core along white matter (repeated
   Gaussian spreading weighted by white-matter probability) with an exact volume.
3. Contrasts from a tissue-class intensity model (``sites``), partial volume, correlated
   heterogeneity inside the tumour, multiplicative bias field, thick-slice acquisition of the
   2D contrasts resampled back, Rician noise, scanner gain, skull stripping (background 0).

Smooth random fields come from small control grids upsampled separably (three small matrix
products), which is what keeps a 1 mm case to about a second or two.

Every case is a pure function of ``(seed, index, site, spacing)``, in two steps (the design of
``augment.py``): ``draw_case`` draws its parameters (``CaseParams``: warp, tumour size, place
and shape, and the random state the rendering draws its noise from), ``render_case`` renders
from them alone; the parameters are saved in each case's marker (``.synthetic.json``,
``params``), so a case can be rendered again from them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

from glioseg.data import labels as L
from glioseg.data.cases import LAYOUTS, case_file_name, case_id_for
from glioseg.data.nifti import save_volume
from glioseg.data.sites import NON_ENHANCING, TISSUES, SiteProfile, get_site
from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_dir

GENERATOR_VERSION = "glioseg-synth/2"  # 2: the calibrated target site (target-severe is the old one)
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE = np.array(
    [[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=np.float64
)
# MNI voxel index m -> SRI24 (RAS) voxel index: S * m + T, fitted on the brain masks.
MNI_TO_SRI_SCALE = np.array([0.99, 1.00, 0.88])
MNI_TO_SRI_SHIFT = np.array([22.91, -10.28, 3.15])
MNI_ORIGIN_MM = np.array([-98.0, -134.0, -72.0])
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MARKER = ".synthetic.json"
"""Hidden file in each written case folder: generator parameters and case statistics."""


class SynthError(GliosegError, ValueError):
    """Bad arguments to the generator or an output folder it must not overwrite."""


# --------------------------------------------------------------------------- geometry helpers


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


# --------------------------------------------------------------------------- template


@dataclass(frozen=True)
class Template:
    """MNI152 2009 tissue maps, ``(197, 233, 189)`` float32 each, 1 mm."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    bbox: np.ndarray  # (2, 3) min/max voxel index of the brain mask
    centre: np.ndarray  # (3,) centroid of the brain mask, voxel index
    stack: np.ndarray  # (X, Y, Z, 3) float32 C-order: gm, wm, mask (for one-gather sampling)


def nilearn_version() -> str:
    """The installed nilearn's version (from its metadata; nilearn is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nilearn")
    except PackageNotFoundError:
        return "not installed"


def template_dir() -> Path:
    """Folder of the MNI152 files inside the installed nilearn package (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SynthError("nilearn is not installed; it ships the MNI152 templates the generator uses")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load (once per process) the MNI152 T1, GM and WM maps and derive mask and CSF."""
    from glioseg.data.nifti import load_volume

    folder = template_dir()
    vols = {}
    for key, name in TEMPLATE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise SynthError(
                f"MNI152 template {name} not found in {folder} (nilearn "
                f"{nilearn_version()}): this nilearn moved or renamed its data files; "
                f"install the nilearn version pinned in scripts/constraints.txt, or update "
                f"glioseg.data.synthetic.TEMPLATE_FILES / template_dir")
        data, _ = load_volume(path, dtype=np.float32)
        vols[key] = data / max(float(data.max()), 1e-6)
    mask = (vols["t1"] > 0.2).astype(np.float32)
    gm = vols["gm"] * mask
    wm = vols["wm"] * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    idx = np.argwhere(mask > 0)
    stack = np.ascontiguousarray(np.stack([gm, wm, mask], axis=-1), dtype=np.float32)
    return Template(gm, wm, csf, mask, np.stack([idx.min(0), idx.max(0)]), idx.mean(0), stack)


# --------------------------------------------------------------------------- spatial model


@dataclass
class Warp:
    """Output voxel -> template voxel mapping of one case.

    ``m = M @ q_d + off + e(i) / S`` where ``q`` is the SRI index of output voxel ``i``
    (``q = (239 - s i0, 239 - s i1, s i2)``), ``q_d`` is ``q`` after the mass effect and ``e`` the
    elastic displacement (mm).
    """

    spacing: float
    lin: np.ndarray  # (3, 3): q -> m
    off: np.ndarray  # (3,)
    elastic_ctrl: np.ndarray  # (3, a, b, c) mm, spread over the bbox
    lo: np.ndarray  # (3,) bbox start (output voxels)
    hi: np.ndarray  # (3,) bbox stop


def draw_warp(rng: np.random.Generator, site: SiteProfile, spacing: float) -> Warp:
    """Random affine (+-5 % scale, +-6 deg, +-3 mm) and elastic warp; bbox of the brain."""
    return make_warp(spacing, *_draw_warp_params(rng, site))


def _draw_warp_params(
    rng: np.random.Generator, site: SiteProfile
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(scale (3,), angles_deg (3,), shift_mm (3,), elastic_ctrl_mm (3, 5, 6, 5))``."""
    scale = 1.0 + rng.uniform(-0.05, 0.05, 3)
    angles = rng.uniform(-6, 6, 3)
    shift = rng.uniform(-3, 3, 3)
    ctrl = rng.standard_normal((3, 5, 6, 5)) * site.elastic_mm
    return scale, angles, shift, ctrl


def make_warp(spacing: float, scale: np.ndarray, angles_deg: np.ndarray, shift: np.ndarray,
              ctrl: np.ndarray) -> Warp:
    """The ``Warp`` of drawn parameters (pure): affine about the brain centre, bbox, elastic."""
    tpl = load_template()
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    a = rot @ np.diag(scale)  # acts on SRI coordinates about the brain centre
    centre = MNI_TO_SRI_SCALE * tpl.centre + MNI_TO_SRI_SHIFT
    # q' = C + a (q - C) + shift ;  m = (q' - T) / S
    inv_s = np.diag(1.0 / MNI_TO_SRI_SCALE)
    lin = inv_s @ a
    off = inv_s @ (centre - a @ centre + shift - MNI_TO_SRI_SHIFT)
    # Bounding box: template brain bbox corners mapped back to output voxels, plus a margin.
    corners = np.array(np.meshgrid(*tpl.bbox.T, indexing="ij")).reshape(3, -1).T
    q = np.linalg.solve(lin, (corners - off).T).T
    b = np.stack([239.0 - q[:, 0], 239.0 - q[:, 1], q[:, 2]], axis=1) / spacing
    shape = np.array(grid_shape(spacing))
    margin = 10.0 / spacing
    lo = np.clip(np.floor(b.min(0) - margin), 0, shape).astype(int)
    hi = np.clip(np.ceil(b.max(0) + margin) + 1, 0, shape).astype(int)
    return Warp(spacing, lin, off, ctrl, lo, hi)


def template_coords(
    warp: Warp,
    lo: np.ndarray,
    hi: np.ndarray,
    stride: int = 1,
    displacement: np.ndarray | None = None,
) -> np.ndarray:
    """Template voxel coordinates ``(3, X, Y, Z)`` float32 of output voxels ``lo:hi:stride``.

    ``displacement``: optional ``(3, X, Y, Z)`` mm in SRI space added to ``q`` (mass effect).
    The elastic field is defined on the whole output grid, so any region sees the same warp.
    """
    s = warp.spacing
    idx = [np.arange(lo[k], hi[k], stride, dtype=np.float32) * s for k in range(3)]
    q = [(239.0 - idx[0])[:, None, None], (239.0 - idx[1])[None, :, None],
         idx[2][None, None, :]]
    region = tuple(slice(int(a), int(b), stride) for a, b in zip(lo, hi, strict=True))
    full = grid_shape(s)
    out = np.empty((3, len(idx[0]), len(idx[1]), len(idx[2])), np.float32)
    for j in range(3):
        acc = upsample(warp.elastic_ctrl[j], full, region=region)  # type: ignore[arg-type]
        acc = acc / np.float32(MNI_TO_SRI_SCALE[j]) + np.float32(warp.off[j])
        for k in range(3):
            if warp.lin[j, k] == 0.0:
                continue
            acc += np.float32(warp.lin[j, k]) * q[k]
            if displacement is not None:
                acc += np.float32(warp.lin[j, k]) * displacement[k]
        out[j] = acc
    return out


STACK_KEYS: tuple[str, ...] = ("gm", "wm", "mask")


def trilinear(stack: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a channels-last volume ``(X, Y, Z, C)`` at points ``(3, N)``
    (voxel coordinates) -> ``(N, C)`` float32; 0 outside the volume (as scipy's
    ``map_coordinates(order=1, mode="constant")``), with one gather per corner for all channels.
    """
    shape = np.array(stack.shape[:3])
    nch = stack.shape[3]
    flat = stack.reshape(-1, nch)
    valid = np.all((pts >= 0) & (pts <= (shape - 1)[:, None]), axis=0)
    i0 = np.clip(np.floor(pts).astype(np.int64), 0, (shape - 2)[:, None])
    f = np.clip(pts - i0, 0.0, 1.0).astype(np.float32)
    sy, sz = int(shape[1] * shape[2]), int(shape[2])
    base = i0[0] * sy + i0[1] * sz + i0[2]
    out = np.zeros((pts.shape[1], nch), np.float32)
    for dx in (0, 1):
        wx = f[0] if dx else 1.0 - f[0]
        for dy in (0, 1):
            wxy = wx * (f[1] if dy else 1.0 - f[1])
            for dz in (0, 1):
                w = wxy * (f[2] if dz else 1.0 - f[2])
                out += w[:, None] * flat[base + (dx * sy + dy * sz + dz)]
    out[~valid] = 0.0
    return out


def sample_tissue(coords: np.ndarray, keys: tuple[str, ...] = STACK_KEYS) -> dict:
    """Trilinear samples of the template maps at ``coords`` ``(3, ...)`` -> float32 arrays."""
    tpl = load_template()
    vals = trilinear(tpl.stack, coords.reshape(3, -1))
    return {k: vals[:, STACK_KEYS.index(k)].reshape(coords.shape[1:]) for k in keys}


def sample_brain(warp: Warp, lo: np.ndarray, hi: np.ndarray, maybe: np.ndarray,
                 displacement: np.ndarray) -> dict[str, np.ndarray]:
    """CSF, GM, WM fractions and mask ``(X, Y, Z)`` float32 of ``lo:hi``, sampled only where
    ``maybe`` (bool, same shape) is set; 0 elsewhere. CSF = clip(mask - GM - WM, 0, 1)."""
    coords = template_coords(warp, lo, hi, displacement=displacement)
    pts = coords[:, maybe]
    del coords
    vals = sample_tissue(pts)
    out = {}
    for key in ("gm", "wm", "mask"):
        arr = np.zeros(maybe.shape, np.float32)
        arr[maybe] = vals[key]
        out[key] = arr
    out["csf"] = np.clip(out["mask"] - out["gm"] - out["wm"], 0.0, 1.0)
    return out


# --------------------------------------------------------------------------- tumour model


@dataclass
class Lesion:
    """One lesion: centre (bbox voxel index), core volume (voxels), shape parameters."""

    centre: np.ndarray
    core_vox: int
    rot: np.ndarray
    axes: np.ndarray
    rim_mm: float


@dataclass
class Coarse:
    """A coarse pass (every ``stride`` output voxel of the loose bbox) without mass effect."""

    stride: int
    origin: np.ndarray  # (3,) output voxel of coarse index 0
    coords: np.ndarray  # (3, x, y, z) template voxel coordinates
    wm: np.ndarray  # (x, y, z)
    inside: np.ndarray  # (x, y, z) bool brain mask
    dist: np.ndarray  # (x, y, z) distance to the brain surface, mm
    supra: np.ndarray  # (x, y, z) bool: cerebrum (no cerebellum, brainstem, deep midline)


def coarse_pass(warp: Warp) -> Coarse:
    """Brain mask, white matter and surface distance at ~4 mm over the loose bbox."""
    stride = max(1, int(round(4.0 / warp.spacing)))
    coords = template_coords(warp, warp.lo, warp.hi, stride)
    t = sample_tissue(coords, ("wm", "mask"))
    inside = t["mask"] > 0.5
    dist = ndimage.distance_transform_edt(inside, sampling=stride * warp.spacing)
    mni = coords + MNI_ORIGIN_MM[:, None, None, None].astype(np.float32)
    supra = ((mni[2] > -25) & ~((mni[1] < -30) & (mni[2] < 5))
             & ~((np.abs(mni[0]) < 18) & (mni[2] < 8)))
    return Coarse(stride, warp.lo.copy(), coords, t["wm"], inside, dist.astype(np.float32),
                  supra)


# Multifocal geometry. A core's outline reaches up to ~1.45 times its equivalent-sphere radius
# from its centre, a whole tumour's up to ~1.55 times its own (90th percentiles measured on
# unifocal cases at 2 mm: 1.46 and 1.58); two lesions whose centres are at least the sum of
# those reaches apart (plus a gap) cannot touch.
CORE_REACH: float = 1.45
WT_REACH: float = 1.55
LESION_GAP_MM: float = 4.0
"""Clear brain between the two cores of a multifocal case (also enforced on the voxels)."""


def sphere_radius(volume_mm3: float) -> float:
    """Radius (mm) of the sphere of ``volume_mm3``."""
    return (3.0 * max(volume_mm3, 0.0) / (4.0 * math.pi)) ** (1.0 / 3.0)


def edema_margin(core_radii_mm: list[float], edema_mm3: float) -> float:
    """Thickness ``t`` (mm) of equal edema shells around cores of these radii holding
    ``edema_mm3`` in all: ``sum((r + t)^3 - r^3) = 3 V / (4 pi)``, solved by bisection."""
    target = 3.0 * max(edema_mm3, 0.0) / (4.0 * math.pi)
    lo, hi = 0.0, 200.0
    for _ in range(50):
        t = 0.5 * (lo + hi)
        if sum((r + t) ** 3 - r**3 for r in core_radii_mm) < target:
            lo = t
        else:
            hi = t
    return 0.5 * (lo + hi)


def _centre_candidates(coarse: Coarse, radius_mm: float) -> np.ndarray:
    """Coarse indices ``(N, 3)`` where a lesion of ``radius_mm`` may be centred: supratentorial
    white matter (WM > 0.6, and > 0.5 at the six neighbours, so that the centre's jitter of
    half a coarse voxel stays in white matter) far enough from the brain surface (looser tiers
    where there is no room; the deepest brain voxels as a last resort)."""
    cross = ndimage.generate_binary_structure(3, 1)
    deep_wm = (coarse.wm > 0.6) & (ndimage.minimum_filter(coarse.wm, footprint=cross) > 0.5)
    for wm in (deep_wm, coarse.wm > 0.6):
        base = coarse.inside & coarse.supra & wm
        for need in (radius_mm + 8.0, radius_mm * 0.6 + 6.0, 10.0):
            ok = base & (coarse.dist > need)
            if ok.any():
                return np.argwhere(ok)
    return np.argwhere(coarse.inside & (coarse.dist >= coarse.dist.max() * 0.8))


def _second_centre(
    rng: np.random.Generator, cand1: np.ndarray, cand2: np.ndarray, mm_per_index: float,
    apart_mm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """A pair (first from ``cand1``, second from ``cand2``) at least ``apart_mm[1]`` apart
    (at most 30 mm more where possible), else at least ``apart_mm[0]``, else the farthest."""
    core_apart, wt_apart = apart_mm
    first = cand1[0]
    for lo, hi in ((wt_apart, wt_apart + 30.0), (wt_apart, np.inf), (core_apart, np.inf)):
        for _ in range(8):  # a few first centres: a deep central one may leave no room
            first = cand1[rng.integers(len(cand1))]
            d = np.linalg.norm((cand2 - first) * mm_per_index, axis=1)
            far = cand2[(d >= lo) & (d <= hi)]
            if len(far):
                return first, far[rng.integers(len(far))]
    d = np.linalg.norm((cand2 - first) * mm_per_index, axis=1)
    return first, cand2[int(np.argmax(d))]


def pick_centres(
    rng: np.random.Generator, coarse: Coarse, spacing: float, radii_mm: list[float],
    apart_mm: tuple[float, float] = (0.0, 0.0),
) -> list[np.ndarray]:
    """One centre (output voxel index, float) per lesion of equivalent core radius
    ``radii_mm[i]``, in supratentorial white matter away from the brain surface (cerebellum,
    brainstem and deep midline excluded in MNI space).

    A second lesion is centred at least ``apart_mm[1]`` from the first (whole tumours apart)
    where the brain has room, else at least ``apart_mm[0]`` (cores apart), else as far as the
    candidates allow (``_tumour_labels`` still keeps the cores apart then).
    """
    stride = coarse.stride
    cand = _centre_candidates(coarse, radii_mm[0])
    if len(radii_mm) == 1:
        centres = [cand[rng.integers(len(cand))]]
    else:
        centres = list(_second_centre(rng, cand, _centre_candidates(coarse, radii_mm[1]),
                                      stride * spacing, apart_mm))
    jitter = rng.uniform(-0.5, 0.5, (len(centres), 3)) * stride
    return [coarse.origin + c * stride + j for c, j in zip(centres, jitter, strict=True)]


def _linear_rows(pos: np.ndarray, n: int) -> np.ndarray:
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
    mats = [_linear_rows(np.asarray(p, np.float64), n)
            for p, n in zip(positions, arr.shape, strict=True)]
    t = np.tensordot(mats[0], arr.astype(np.float32), axes=(1, 0))
    t = np.einsum("yb,xbc->xyc", mats[1], t)
    return (t.reshape(-1, arr.shape[2]) @ mats[2].T).reshape(
        mats[0].shape[0], mats[1].shape[0], mats[2].shape[0])


def from_coarse(arr: np.ndarray, coarse: Coarse, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Linear interpolation of a coarse-pass array onto output voxels ``lo:hi``, float32."""
    return separable_linear(arr, [(np.arange(lo[k], hi[k]) - coarse.origin[k]) / coarse.stride
                                  for k in range(3)])


def mass_effect(
    shape: tuple[int, int, int], spacing: float, lesions: list[Lesion], k: float,
    surface_dist: np.ndarray,
) -> np.ndarray:
    """Backward radial displacement ``(3, X, Y, Z)`` mm in SRI space pushing tissue away.

    Output voxel at radius ``r`` samples tissue at ``r_src = cbrt(max(r^3 - k R^3, 0))``; the
    displacement fades to 0 within 12 mm of the brain surface (``surface_dist``, mm).
    """
    grid = np.indices(shape, dtype=np.float32)
    disp = np.zeros((3, *shape), np.float32)
    fade = np.clip(surface_dist / 12.0, 0.0, 1.0)
    # index axes 0 and 1 are flipped with respect to SRI
    sign = np.array([-1.0, -1.0, 1.0], np.float32)[:, None, None, None]
    for les in lesions:
        r_core = (3.0 * les.core_vox * spacing**3 / (4.0 * math.pi)) ** (1.0 / 3.0)
        d = (grid - les.centre[:, None, None, None].astype(np.float32)) * spacing
        r = np.sqrt((d * d).sum(0)) + 1e-3
        r_src = np.cbrt(np.maximum(r**3 - k * r_core**3, 0.0))
        disp += sign * d * ((r_src - r) / r * fade)[None]
    return disp


def core_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: float, les: Lesion
) -> np.ndarray:
    """Perturbed ellipsoidal radius (mm-like) ``(X, Y, Z)`` around the lesion centre."""
    grid = np.indices(shape, dtype=np.float32)
    d = (grid - les.centre[:, None, None, None].astype(np.float32)) * spacing
    u = np.tensordot((les.rot.T / les.axes[:, None]).astype(np.float32), d, axes=(1, 0))
    rho = np.sqrt((u * u).sum(0))
    r_core = (3.0 * les.core_vox * spacing**3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    big = smooth_noise(rng, shape, max(r_core * 0.8, 6.0) / spacing)
    fine = smooth_noise(rng, shape, max(r_core * 0.3, 3.0) / spacing)
    amp = rng.uniform(0.08, 0.18)
    # a smooth, bounded factor (tanh) so that the outline is lobulated but never cut flat
    return rho * np.exp(2.0 * amp * np.tanh(0.5 * big) + 0.35 * amp * fine)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself if empty)."""
    import cc3d

    if not mask.any():
        return mask
    lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def grow(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` dilated by ``voxels`` with the 3x3x3 cube (26-neighbours), done in the mask's
    bounding box: voxels of the result are at most ``voxels`` steps (Chebyshev) from ``mask``."""
    out = np.zeros_like(mask, dtype=bool)
    idx = np.argwhere(mask)
    if idx.size == 0:
        return out
    lo = np.maximum(idx.min(0) - voxels, 0)
    hi = np.minimum(idx.max(0) + voxels + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    out[box] = ndimage.maximum_filter(mask[box].astype(np.uint8), size=2 * voxels + 1) > 0
    return out


def touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` in 26-connected components that contain a ``seed`` voxel."""
    import cc3d

    lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    keep = np.unique(lab[seed & mask])
    return np.isin(lab, keep[keep > 0])


def lowest(values: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` smallest ``values`` (ties broken by index order)."""
    flat = values.ravel()
    out = np.zeros(flat.shape, bool)
    n = int(min(max(n, 0), flat.size))
    if n:
        out[np.argpartition(flat, n - 1)[:n]] = True
    return out.reshape(values.shape)


def spread_edema(
    core: np.ndarray, wm: np.ndarray, gm: np.ndarray, brain: np.ndarray, n_vox: int,
    spacing: float, rng: np.random.Generator, allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Edema mask of exactly ``n_vox`` voxels (if room) grown from ``core`` along white matter.

    Repeated Gaussian spreading weighted by the permeability ``wm^3 + 0.05 gm`` (a cheap stand-in
    for Fisher-Kolmogorov growth), done at >= 2 mm and brought back linearly. Eight rounds,
    more (up to 24) while the reachable permeable brain holds fewer than ``n_vox`` voxels (a
    large tumour whose cores sit in little white matter).
    """
    f = max(1, int(round(2.0 / spacing)))
    perm = wm**3 + 0.05 * gm
    if allowed is not None:
        perm = perm * allowed
    c0 = core.astype(np.float32)
    if f > 1:
        perm_c, c_c = perm[::f, ::f, ::f], c0[::f, ::f, ::f]
        brain_c = brain[::f, ::f, ::f]
    else:
        perm_c, c_c, brain_c = perm, c0, brain
    c = c_c.copy()
    for step in range(24):
        c = ndimage.gaussian_filter(c, 2.5 / (spacing * f)) * perm_c
        c = np.maximum(c, c_c)
        c /= max(float(c.max()), 1e-12)
        if step >= 7:
            room = np.count_nonzero((c >= 1e-4) & (perm_c >= 0.02) & brain_c & (c_c == 0))
            if room * f**3 >= 1.2 * n_vox:
                break
    if f > 1:
        c = separable_linear(c, [np.arange(n) / f for n in core.shape])
    score = np.log(c + 1e-6) + 0.8 * smooth_noise(rng, core.shape, 7.0 / spacing)
    score[~brain | core | (perm < 0.02) | (c < 1e-4)] = np.inf
    n = min(n_vox, int(np.isfinite(score).sum()))
    return lowest(-np.where(np.isfinite(score), score, -np.inf), n) if n else np.zeros_like(core)


# --------------------------------------------------------------------------- acquisition


def _slice_matrices(
    z: int, thickness_vox: float, start: float
) -> tuple[np.ndarray, np.ndarray]:
    """Acquisition ``(Z, n)`` (box average over each slice) and reconstruction ``(n, Z)``
    (linear interpolation between slice centres) matrices along Z, float32."""
    centres = np.arange(start, z, thickness_vox)
    if len(centres) < 2:
        centres = np.array([0.0, z - 1.0])
    zz = np.arange(z, dtype=np.float64)
    # each voxel contributes its overlap with the slab [c - t/2, c + t/2] (exact box average)
    acq = np.clip(np.minimum(zz[:, None] + 0.5, centres[None, :] + thickness_vox / 2.0)
                  - np.maximum(zz[:, None] - 0.5, centres[None, :] - thickness_vox / 2.0),
                  0.0, 1.0)
    acq /= np.maximum(acq.sum(0, keepdims=True), 1e-6)
    rec = _linear_rows(np.interp(zz, centres, np.arange(len(centres))), len(centres))
    return acq.astype(np.float32), np.ascontiguousarray(rec.T)


def thick_slices(
    vol: np.ndarray, mask: np.ndarray | None, thickness_vox: float, sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Axial acquisition with thick slices, Rician noise, then linear resampling back along Z.

    ``vol`` ``(X, Y, Z)`` float32; noise of std ``sigma`` is added to the acquired slices
    (only inside ``mask`` when the slices are not thick).
    """
    if thickness_vox <= 1.25:
        return rician(vol, sigma, rng, mask)
    x, y, z = vol.shape
    acq_m, rec_m = _slice_matrices(z, thickness_vox, float(rng.uniform(0, thickness_vox)))
    acq = rician(vol.reshape(-1, z) @ acq_m, sigma, rng)
    return (acq @ rec_m).reshape(x, y, z)


def rician(
    vol: np.ndarray, sigma: float, rng: np.random.Generator, mask: np.ndarray | None = None
) -> np.ndarray:
    """``sqrt((I + s n1)^2 + (s n2)^2)`` with independent standard normals n1, n2.

    With ``mask`` (bool, same shape) only those voxels get noise (the rest is left as is).
    """
    if mask is not None:
        out = vol.copy()
        out[mask] = rician(vol[mask], sigma, rng)
        return out
    n1 = rng.standard_normal(vol.shape, dtype=np.float32)
    n2 = rng.standard_normal(vol.shape, dtype=np.float32)
    return np.sqrt((vol + sigma * n1) ** 2 + (sigma * n2) ** 2)


# --------------------------------------------------------------------------- one case


@dataclass
class SyntheticCase:
    """One generated case on the full grid.

    Attributes:
        image: ``(4, X, Y, Z)`` float32 in ``labels.MODALITIES`` order, scanner units, 0 outside
            the brain (rounded to integers by the writer).
        labels: ``(X, Y, Z)`` uint8 internal labels.
        tissue: ``(3, X, Y, Z)`` float32 CSF, GM, WM fractions after warping (before tumour).
        affine: 4x4 BraTS affine at the case spacing.
        stats: volumes (mL), drawn parameters, tissue means; JSON-serialisable.
        params: the drawn ``CaseParams`` it was rendered from (``render_case(params)`` renders
            it again).
    """

    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    stats: dict
    params: CaseParams | None = None


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of a cohort drawn with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _draw_lesions(
    rng: np.random.Generator, site: SiteProfile, coarse: Coarse, wt_ml: float, spacing: float
) -> tuple[list[Lesion], float]:
    core_ml = wt_ml * rng.uniform(*site.core_fraction)
    n = 2 if rng.random() < site.multifocal else 1
    shares = [1.0] if n == 1 else [s := rng.uniform(0.6, 0.8), 1.0 - s]
    radii = [sphere_radius(core_ml * share * 1000.0) for share in shares]
    # multifocal: centres far enough apart for separate cores and, with room, separate edema
    t = edema_margin(radii, (wt_ml - core_ml) * 1000.0)
    apart = (CORE_REACH * sum(radii) + LESION_GAP_MM,
             WT_REACH * (sum(radii) + 2.0 * t) + LESION_GAP_MM)
    centres = pick_centres(rng, coarse, spacing, radii, apart)
    lesions = []
    for c, share in zip(centres, shares, strict=True):
        ax = np.exp(rng.uniform(-0.25, 0.25, 3))
        lesions.append(Lesion(
            centre=np.asarray(c, np.float64),
            core_vox=max(8, int(round(core_ml * share * 1000.0 / spacing**3))),
            rot=Rotation.random(random_state=rng).as_matrix(),
            axes=ax / np.cbrt(ax.prod()),
            rim_mm=rng.uniform(2.0, 6.0),
        ))
    return lesions, core_ml


def _tumour_labels(
    rng: np.random.Generator, site: SiteProfile, lesions: list[Lesion], tissue: dict,
    brain: np.ndarray, wt_vox: int, spacing: float, has_et: bool, open_ring: bool,
) -> np.ndarray:
    shape = brain.shape
    labels = np.zeros(shape, np.uint8)
    core = np.zeros(shape, bool)
    necrosis = np.zeros(shape, bool)
    for les in lesions:
        rho = core_field(rng, shape, spacing, les)
        # a later lesion keeps a gap from the cores drawn before it: separate foci stay separate
        free = brain
        if core.any():
            free = brain & ~grow(core, max(1, round(LESION_GAP_MM / spacing)))
        les_core = largest_component(lowest(np.where(free, rho, np.inf), les.core_vox) & free)
        thr = float(rho[les_core].max()) if les_core.any() else 0.0
        rim = les.rim_mm * (1.0 + 0.4 * smooth_noise(rng, shape, 6.0 / spacing))
        core |= les_core
        necrosis |= les_core & (rho < thr - rim)
    edema = spread_edema(core, tissue["wm"], tissue["gm"], brain, wt_vox - int(core.sum()),
                         spacing, rng, tissue.get("supra"))
    edema &= touching(edema | core, core)  # no islands of edema away from the tumour
    labels[edema] = L.ED
    if not has_et:
        labels[core] = L.NCR
        return labels
    rim_mask = core & ~necrosis
    labels[core] = L.ET
    labels[necrosis] = L.NCR
    if open_ring:
        # open the ring where a smooth field is highest: that part of the wall does not enhance
        g = smooth_noise(rng, shape, 25.0 / spacing)
        vals = g[rim_mask]
        if vals.size:
            cut = np.quantile(vals, 1.0 - rng.uniform(0.2, 0.4))
            labels[rim_mask & (g > cut)] = L.NCR
    return labels


def _intensities(
    rng: np.random.Generator, site: SiteProfile, has_et: bool
) -> dict[str, np.ndarray]:
    """Per contrast, the mean of each tissue class (``TISSUES`` order), drawn from the site table."""
    means = {}
    for mod in L.MODALITIES:
        ranges = site.intensities[mod]
        mu = np.array([rng.uniform(lo, hi) for lo, hi in ranges])
        if not has_et:
            mu[TISSUES.index("necrosis")] = rng.uniform(*NON_ENHANCING[mod])
        means[mod] = mu
    return means


# heterogeneity sign/amplitude per contrast for (edema, necrosis, enhancing): one shared field
HETERO = {
    "t1": (-0.04, -0.12, -0.06),
    "t1ce": (-0.04, -0.12, 0.15),
    "t2": (0.06, 0.10, 0.06),
    "flair": (0.06, 0.18, 0.06),
}


@dataclass
class CaseParams:
    """What is drawn for one case before anything is rendered; plain JSON-serialisable values.

    ``render_case(params)`` renders the case from these alone (``generate_case`` is
    ``render_case(draw_case(...))``). The anatomy and the tumour's size, place and shape are
    fields; the fields of noise (tumour texture, edema spread, bias, Rician noise) and the
    acquisition values (tissue intensities, gain, noise level, slice thickness, shift) come
    from ``render_state``, the random generator's state once the fields above are drawn, and
    are recorded in the case's ``stats`` as they are drawn. Why not draw those values here
    too: they sit in the random stream between fields whose size depends on the rendered
    geometry, so drawing them first would change every case's bytes.

    Attributes:
        site, spacing: the site profile's name and the voxel size (mm).
        scale, angles_deg, shift_mm, elastic_ctrl_mm: the warp of the template (``make_warp``):
            3 scales, 3 Euler angles (xyz, degrees), 3 shifts (mm), ``(3, 5, 6, 5)`` elastic
            control displacements (mm).
        wt_ml, core_ml: whole-tumour and core volumes (mL) drawn.
        has_et, open_ring: enhancing tumour present; its ring open.
        lesions: per lesion ``centre`` (voxel of the full grid), ``core_vox``, ``rot`` (3x3),
            ``axes`` (3), ``rim_mm``.
        mass_effect_k: strength of the mass effect.
        render_state: ``numpy.random.PCG64`` state the rendering draws from.
    """

    seed: int
    index: int
    site: str
    spacing: float
    scale: list[float]
    angles_deg: list[float]
    shift_mm: list[float]
    elastic_ctrl_mm: list
    wt_ml: float
    core_ml: float
    has_et: bool
    open_ring: bool
    lesions: list[dict]
    mass_effect_k: float
    render_state: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CaseParams:
        return cls(**d)


def _check_spacing(spacing: float) -> None:
    if not 0.5 <= spacing <= 8.0:
        raise SynthError(f"spacing must be between 0.5 and 8 mm, got {spacing}")


def _draw(
    seed: int, index: int, prof: SiteProfile, spacing: float
) -> tuple[CaseParams, Warp, Coarse]:
    """``draw_case``, also returning the warp and coarse pass it placed the lesions with."""
    rng = case_rng(seed, index)
    scale, angles, shift, ctrl = _draw_warp_params(rng, prof)
    warp = make_warp(spacing, scale, angles, shift, ctrl)
    coarse = coarse_pass(warp)
    wt_ml = float(np.clip(prof.wt_median_ml * math.exp(prof.wt_sigma * rng.standard_normal()),
                          *prof.wt_range_ml))
    has_et = rng.random() >= prof.no_et
    open_ring = has_et and rng.random() < prof.open_ring
    lesions, core_ml = _draw_lesions(rng, prof, coarse, wt_ml, spacing)
    k = rng.uniform(0.5, 0.85)
    params = CaseParams(
        seed=int(seed), index=int(index), site=prof.name, spacing=float(spacing),
        scale=scale.tolist(), angles_deg=angles.tolist(), shift_mm=shift.tolist(),
        elastic_ctrl_mm=ctrl.tolist(), wt_ml=wt_ml, core_ml=float(core_ml),
        has_et=bool(has_et), open_ring=bool(open_ring),
        lesions=[{"centre": les.centre.tolist(), "core_vox": int(les.core_vox),
                  "rot": les.rot.tolist(), "axes": les.axes.tolist(),
                  "rim_mm": float(les.rim_mm)} for les in lesions],
        mass_effect_k=float(k), render_state=rng.bit_generator.state,
    )
    return params, warp, coarse


def draw_case(
    seed: int, index: int, site: str | SiteProfile = "source", spacing: float = 1.0
) -> CaseParams:
    """Draw the parameters of case ``index`` of the cohort drawn with ``seed`` (nothing is
    rendered; the lesions are placed on a ~4 mm pass over the warped template)."""
    prof = get_site(site) if isinstance(site, str) else site
    _check_spacing(spacing)
    return _draw(seed, index, prof, spacing)[0]


def render_case(params: CaseParams, site: SiteProfile | None = None) -> SyntheticCase:
    """Render a case from its drawn parameters alone (pure, deterministic).

    ``site``: the profile to render with, when it is not the registered one named
    ``params.site`` (a profile built in code).
    """
    prof = site if site is not None else get_site(params.site)
    _check_spacing(params.spacing)
    warp = make_warp(params.spacing, *(np.asarray(v, np.float64) for v in (
        params.scale, params.angles_deg, params.shift_mm, params.elastic_ctrl_mm)))
    return _render_case(params, prof, warp, coarse_pass(warp))


def generate_case(
    seed: int, index: int, site: str | SiteProfile = "source", spacing: float = 1.0
) -> SyntheticCase:
    """Generate case ``index`` of the cohort drawn with ``seed`` (pure, deterministic):
    ``render_case(draw_case(seed, index, site, spacing))``.

    Returns a ``SyntheticCase`` on the grid ``grid_shape(spacing)`` with affine
    ``grid_affine(spacing)``; its ``params`` are the drawn ``CaseParams``.
    """
    prof = get_site(site) if isinstance(site, str) else site
    _check_spacing(spacing)
    params, warp, coarse = _draw(seed, index, prof, spacing)
    return _render_case(params, prof, warp, coarse)


def _render_case(params: CaseParams, prof: SiteProfile, warp: Warp, coarse: Coarse
                 ) -> SyntheticCase:
    spacing = params.spacing
    # tight box: the coarse brain mask grown by two coarse voxels
    grown = ndimage.binary_dilation(coarse.inside, iterations=1)
    cidx = np.argwhere(grown)
    full = np.array(grid_shape(spacing))
    lo = np.clip(coarse.origin + (cidx.min(0) - 1) * coarse.stride, 0, full)
    hi = np.clip(coarse.origin + (cidx.max(0) + 2) * coarse.stride, 0, full)
    box = tuple(int(h - low) for low, h in zip(lo, hi, strict=True))
    maybe = from_coarse(grown.astype(np.float32), coarse, lo, hi) > 0.01
    lesions = [Lesion(centre=np.asarray(d["centre"], np.float64) - lo,  # box coordinates
                      core_vox=int(d["core_vox"]), rot=np.asarray(d["rot"], np.float64),
                      axes=np.asarray(d["axes"], np.float64), rim_mm=float(d["rim_mm"]))
               for d in params.lesions]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = params.render_state

    surface = from_coarse(coarse.dist, coarse, lo, hi)
    disp = mass_effect(box, spacing, lesions, params.mass_effect_k, surface)  # type: ignore[arg-type]
    tissue = sample_brain(warp, lo, hi, maybe, disp)
    del disp, surface
    brain = tissue["mask"] > 0.5
    tissue["supra"] = (from_coarse(coarse.supra.astype(np.float32), coarse, lo, hi)
                       > 0.5).astype(np.float32)

    labels_box = _tumour_labels(rng, prof, lesions, tissue, brain,
                                int(round(params.wt_ml * 1000.0 / spacing**3)), spacing,
                                params.has_et, params.open_ring)
    image_box, drawn = _render(rng, prof, tissue, labels_box, brain, spacing, params.has_et)

    shape = grid_shape(spacing)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    image = np.zeros((4, *shape), np.float32)
    image[(slice(None), *sl)] = image_box
    labels = np.zeros(shape, np.uint8)
    labels[sl] = labels_box
    tis = np.zeros((3, *shape), np.float32)
    for j, key in enumerate(("csf", "gm", "wm")):
        tis[(j, *sl)] = tissue[key] * brain
    vox_ml = spacing**3 / 1000.0
    stats = {
        "site": prof.name,
        "spacing": spacing,
        "wt_ml_drawn": params.wt_ml,
        "core_ml_drawn": params.core_ml,
        "volumes_ml": {name: float((labels == v).sum() * vox_ml)
                       for name, v in (("NCR", L.NCR), ("ED", L.ED), ("ET", L.ET))},
        "wt_ml": float((labels > 0).sum() * vox_ml),
        "has_et": params.has_et,
        "open_ring": params.open_ring,
        "n_lesions": len(lesions),
        "mass_effect_k": params.mass_effect_k,
        **drawn,
    }
    return SyntheticCase(image, labels, tis, grid_affine(spacing), stats, params)


def _tumour_box(labels: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``labels > 0`` grown by ``margin`` voxels."""
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore


def _render(
    rng: np.random.Generator, prof: SiteProfile, tissue: dict[str, np.ndarray],
    labels: np.ndarray, brain: np.ndarray, spacing: float, has_et: bool,
) -> tuple[np.ndarray, dict]:
    """Contrasts ``(4, X, Y, Z)`` float32 of the bbox and the drawn acquisition parameters."""
    shape = labels.shape
    means = _intensities(rng, prof, has_et)
    # tumour terms live in a box around the tumour: partial volume by a slight blur
    tb = _tumour_box(labels, 3)
    tl = labels[tb]
    tshape = tl.shape
    pv_sigma = 0.6 / spacing
    fr = {}
    for name, v in (("edema", L.ED), ("necrosis", L.NCR), ("enhancing", L.ET)):
        m = (tl == v).astype(np.float32)
        fr[name] = ndimage.gaussian_filter(m, pv_sigma) if pv_sigma > 0.25 else m
    # edema fades towards its margin: full strength next to the core, about half far from it
    f = max(1, int(round(2.0 / spacing)))
    core = ((tl == L.NCR) | (tl == L.ET)).astype(np.float32)[::f, ::f, ::f]
    prox = ndimage.gaussian_filter(core, 8.0 / (spacing * f))
    prox = separable_linear(prox, [np.arange(n) / f for n in tshape]) if f > 1 else prox
    fr["edema"] *= 0.5 + 0.5 * np.clip(prox * 2.5, 0.0, 1.0)
    keep = 1.0 - np.clip(fr["edema"] + fr["necrosis"] + fr["enhancing"], 0.0, 1.0)
    hetero = smooth_noise(rng, tshape, 6.0 / spacing)
    hetero += 2.0 * ndimage.gaussian_filter(rng.standard_normal(tshape, dtype=np.float32),
                                            1.0 / spacing)
    texture = 1.0 + 0.02 * smooth_noise(rng, shape, 5.0 / spacing)
    out = np.zeros((4, *shape), np.float32)
    params: dict = {"intensities": {}, "gain": {}, "noise": {}, "bias": {}, "thickness_mm": {},
                    "shift_vox": {}}
    compression = float(rng.uniform(*prof.compression))
    for ci, mod in enumerate(L.MODALITIES):
        mu = means[mod].astype(np.float32)
        a_ed, a_ncr, a_et = (np.float32(a) for a in HETERO[mod])
        vol = tissue["csf"] * mu[0]
        vol += tissue["gm"] * mu[1]
        vol += tissue["wm"] * mu[2]
        vol *= texture
        sub = vol[tb] * keep
        sub += fr["edema"] * (mu[3] * (1 + a_ed * hetero))
        sub += fr["necrosis"] * (mu[4] * (1 + a_ncr * hetero))
        sub += fr["enhancing"] * (mu[5] * (1 + a_et * hetero))
        vol[tb] = sub
        if compression != 1.0:
            m = np.float32(vol[brain].mean())
            vol -= m
            vol *= np.float32(compression)
            vol += m
        b = float(rng.uniform(*prof.bias))
        field = smooth_noise(rng, shape, 60.0 / spacing)
        field *= np.float32(b / max(float(np.abs(field).max()), 1e-6))
        vol *= np.exp(field)
        th = float(rng.uniform(*(prof.thickness_t1ce if mod == "t1ce" else prof.thickness)))
        sigma = float(rng.uniform(*prof.noise) * mu[2])
        np.maximum(vol, 0.0, out=vol)
        vol = thick_slices(vol, brain, th / spacing, sigma, rng)
        shift = [0, 0, 0]
        if prof.misregistration and mod != "t1ce":
            shift = [int(v) for v in rng.integers(-prof.misregistration,
                                                   prof.misregistration + 1, 3)]
            vol = np.roll(vol, shift, axis=(0, 1, 2))
        gain = float(rng.uniform(*prof.gain))
        vol *= np.float32(gain)
        np.rint(vol, out=vol)
        vol[~brain] = 0.0
        out[ci] = vol
        params["intensities"][mod] = dict(zip(TISSUES, (float(x) for x in means[mod]),
                                              strict=True))
        params["gain"][mod] = gain
        params["noise"][mod] = sigma
        params["bias"][mod] = b
        params["thickness_mm"][mod] = th
        params["shift_vox"][mod] = shift
    params["compression"] = compression
    return out, params


# --------------------------------------------------------------------------- writer


def _marker_params(layout: str, site: str, seed: int, index: int, spacing: float) -> dict:
    return {"generator": GENERATOR_VERSION, "layout": layout, "site": site, "seed": int(seed),
            "index": int(index), "spacing": float(spacing)}


def _write_case(
    out_dir: str, layout: str, site: str, seed: int, index: int, spacing: float
) -> str:
    """Generate and write one case (tmp folder, then rename); skip a complete identical case."""
    prof = get_site(site)
    cid = case_id_for(layout, index, prof.tag)
    final = Path(out_dir) / cid
    params = _marker_params(layout, site, seed, index, spacing)
    if final.exists():
        _check_existing(final, params)
        return str(final)
    with atomic_dir(final) as tmp:
        case = generate_case(seed, index, prof, spacing)
        for ci, mod in enumerate(L.MODALITIES):
            save_volume(tmp / case_file_name(layout, cid, mod), case.image[ci], case.affine,
                        np.int16)
        seg = L.from_internal(case.labels, layout)
        save_volume(tmp / case_file_name(layout, cid, "seg"), seg, case.affine, np.uint8)
        assert case.params is not None
        (tmp / MARKER).write_text(json.dumps({**params, "case_id": cid, "stats": case.stats,
                                              "params": case.params.to_dict()}, indent=1))
    return str(final)


def _check_existing(folder: Path, params: dict) -> None:
    marker = folder / MARKER
    if not marker.is_file():
        raise SynthError(f"{folder}: exists and was not written by the generator; "
                         "choose another output folder")
    try:
        old = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SynthError(f"{marker}: unreadable generator marker ({exc})") from None
    diff = [k for k, v in params.items() if old.get(k) != v]
    if diff:
        raise SynthError(f"{folder}: exists with different generator parameters "
                         f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); "
                         "choose another output folder")


def write_cohort(
    out_dir: str | Path,
    n_cases: int = 10,
    layout: str = "brats2021",
    site: str = "source",
    seed: int = 0,
    spacing: float = 1.0,
    start: int = 0,
    workers: int = 1,
) -> list[Path]:
    """Write cases ``start .. start + n_cases - 1`` of a synthetic cohort in a BraTS layout.

    Each case goes to a temporary folder and is renamed when complete; an existing complete
    case written with the same parameters is skipped (resume), one with other parameters is
    an error. Same ``seed`` -> same bytes, whatever ``workers``.

    Returns:
        The case folders, in index order.
    """
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    get_site(site)
    if n_cases < 1:
        raise SynthError(f"--cases must be at least 1, got {n_cases}")
    if start < 0:
        raise SynthError(f"--start must be >= 0, got {start}")
    if layout == "brats2020" and start + n_cases > 1000:
        raise SynthError("brats2020 case ids have 3 digits: start + cases must be <= 1000")
    if not 0.5 <= spacing <= 8.0:
        raise SynthError(f"--spacing must be between 0.5 and 8 mm, got {spacing}")
    if workers < 1:
        raise SynthError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    indices = list(range(start, start + n_cases))
    args = [(str(out), layout, site, int(seed), i, float(spacing)) for i in indices]
    done: dict[int, str] = {}
    bar = tqdm(total=n_cases, desc=f"synth {site}", unit="case")
    try:
        if workers == 1 or n_cases == 1:
            for a in args:
                done[a[4]] = _write_case(*a)
                bar.update()
        else:
            with ProcessPoolExecutor(min(workers, n_cases), mp_context=get_context("spawn")) as ex:
                futs = {ex.submit(_write_case, *a): a[4] for a in args}
                for fut in as_completed(futs):
                    done[futs[fut]] = fut.result()
                    bar.update()
    finally:
        bar.close()
    return [Path(done[i]) for i in indices]


def describe_sites() -> str:
    """One line per site profile (for help texts)."""
    from glioseg.data.sites import SITES

    return "\n".join(f"{n}: {asdict(p)}" for n, p in SITES.items())


def cohort_digest(paths: list[Path]) -> str:
    """SHA-256 over the bytes of every NIfTI file of ``paths`` (sorted); for reproducibility checks."""
    h = hashlib.sha256()
    for folder in paths:
        for f in sorted(Path(folder).glob("*.nii.gz")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()

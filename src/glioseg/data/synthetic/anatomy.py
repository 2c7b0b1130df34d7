"""Anatomy of a synthetic case: the MNI152 template, its warp onto the BraTS grid, sampling.

The MNI152 2009 T1 template with its grey- and white-matter maps ships inside the nilearn
wheel (read offline, nilearn is not imported). Brain mask = T1 > 0.2 max (as nilearn does),
CSF = clip(mask - GM - WM, 0, 1). Each case draws a random affine (a few % scale, a few
degrees) and a smooth elastic warp (``Warp``), and its tissue fractions are sampled
trilinearly onto the BraTS grid (``sample_brain``); ``coarse_pass`` is the ~4 mm look at the
warped brain that places the lesions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from glioseg.data.sites import SiteProfile
from glioseg.data.synthetic.grid import SynthError, grid_shape, separable_linear, upsample

# MNI voxel index m -> SRI24 (RAS) voxel index: S * m + T, fitted on the brain masks.
MNI_TO_SRI_SCALE = np.array([0.99, 1.00, 0.88])
MNI_TO_SRI_SHIFT = np.array([22.91, -10.28, 3.15])
MNI_ORIGIN_MM = np.array([-98.0, -134.0, -72.0])
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


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
                f"glioseg.data.synthetic.anatomy.TEMPLATE_FILES / template_dir")
        data, _ = load_volume(path, dtype=np.float32)
        vols[key] = data / max(float(data.max()), 1e-6)
    mask = (vols["t1"] > 0.2).astype(np.float32)
    gm = vols["gm"] * mask
    wm = vols["wm"] * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    idx = np.argwhere(mask > 0)
    stack = np.ascontiguousarray(np.stack([gm, wm, mask], axis=-1), dtype=np.float32)
    return Template(gm, wm, csf, mask, np.stack([idx.min(0), idx.max(0)]), idx.mean(0), stack)


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
    return make_warp(spacing, *draw_warp_params(rng, site))


def draw_warp_params(
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



def from_coarse(arr: np.ndarray, coarse: Coarse, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Linear interpolation of a coarse-pass array onto output voxels ``lo:hi``, float32."""
    return separable_linear(arr, [(np.arange(lo[k], hi[k]) - coarse.origin[k]) / coarse.stride
                                  for k in range(3)])

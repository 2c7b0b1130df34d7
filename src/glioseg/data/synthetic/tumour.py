"""Tumour geometry of a synthetic case: where lesions go, their shape, mass effect, edema.

One or two lesions centred in supratentorial deep white matter (two: far enough apart for
separate cores, and separate edema where the brain has room); a noise-perturbed, randomly
rotated ellipsoidal core (exact volume), necrosis inside an enhancing rim of 2-6 mm
(sometimes open, ~10 % of cases without enhancement), mass effect (radial backward warp faded
near the brain surface), edema spread from the core along white matter (repeated Gaussian
spreading weighted by white-matter probability) with an exact volume. ``tumour_labels`` turns
drawn lesions into the internal labels of a case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from glioseg.data import labels as L
from glioseg.data.sites import SiteProfile
from glioseg.data.synthetic.anatomy import Coarse
from glioseg.data.synthetic.grid import separable_linear, smooth_noise


@dataclass
class Lesion:
    """One lesion: centre (bbox voxel index), core volume (voxels), shape parameters."""

    centre: np.ndarray
    core_vox: int
    rot: np.ndarray
    axes: np.ndarray
    rim_mm: float


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
    candidates allow (``tumour_labels`` still keeps the cores apart then).
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


def tumour_labels(
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

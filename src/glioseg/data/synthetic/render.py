"""Rendering of a synthetic case from its drawn parameters: labels, contrasts, acquisition.

Contrasts come from a tissue-class intensity model (``glioseg.data.sites``: each site
profile's intensities, bias, noise, slice thickness, gain, contrast compression), partial
volume, correlated heterogeneity inside the tumour, multiplicative bias field, thick-slice
acquisition of the 2D contrasts resampled back, Rician noise, scanner gain, skull stripping
(background 0). ``generate_case`` is ``render_case(draw_case(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from glioseg.data import labels as L
from glioseg.data.sites import NON_ENHANCING, TISSUES, SiteProfile, get_site
from glioseg.data.synthetic.anatomy import (
    Coarse,
    Warp,
    coarse_pass,
    from_coarse,
    make_warp,
    sample_brain,
)
from glioseg.data.synthetic.grid import (
    check_spacing,
    grid_affine,
    grid_shape,
    linear_rows,
    separable_linear,
    smooth_noise,
)
from glioseg.data.synthetic.params import CaseParams, draw_case_with_geometry
from glioseg.data.synthetic.tumour import Lesion, mass_effect, tumour_labels


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


def render_case(params: CaseParams, site: SiteProfile | None = None) -> SyntheticCase:
    """Render a case from its drawn parameters alone (pure, deterministic).

    ``site``: the profile to render with, when it is not the registered one named
    ``params.site`` (a profile built in code).
    """
    prof = site if site is not None else get_site(params.site)
    check_spacing(params.spacing)
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
    check_spacing(spacing)
    params, warp, coarse = draw_case_with_geometry(seed, index, prof, spacing)
    return _render_case(params, prof, warp, coarse)


def _case_box(
    coarse: Coarse, spacing: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray]:
    """Tight box (the coarse brain mask grown by two coarse voxels): lo, hi, shape, maybe-brain."""
    grown = ndimage.binary_dilation(coarse.inside, iterations=1)
    cidx = np.argwhere(grown)
    full = np.array(grid_shape(spacing))
    lo = np.clip(coarse.origin + (cidx.min(0) - 1) * coarse.stride, 0, full)
    hi = np.clip(coarse.origin + (cidx.max(0) + 2) * coarse.stride, 0, full)
    box = tuple(int(h - low) for low, h in zip(lo, hi, strict=True))
    maybe = from_coarse(grown.astype(np.float32), coarse, lo, hi) > 0.01
    return lo, hi, box, maybe


def _box_tissue(
    params: CaseParams, warp: Warp, coarse: Coarse, lo: np.ndarray, hi: np.ndarray,
    box: tuple[int, ...], maybe: np.ndarray, lesions: list[Lesion],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue maps of the box after the mass effect, with ``supra``, and the brain mask."""
    surface = from_coarse(coarse.dist, coarse, lo, hi)
    disp = mass_effect(box, params.spacing, lesions, params.mass_effect_k, surface)  # type: ignore[arg-type]
    tissue = sample_brain(warp, lo, hi, maybe, disp)
    del disp, surface
    brain = tissue["mask"] > 0.5
    tissue["supra"] = (from_coarse(coarse.supra.astype(np.float32), coarse, lo, hi)
                       > 0.5).astype(np.float32)
    return tissue, brain


def _to_grid(
    spacing: float, lo: np.ndarray, hi: np.ndarray, image_box: np.ndarray,
    labels_box: np.ndarray, tissue: dict[str, np.ndarray], brain: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, labels and tissue maps of the box placed on the whole grid (zeros outside)."""
    shape = grid_shape(spacing)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    image = np.zeros((4, *shape), np.float32)
    image[(slice(None), *sl)] = image_box
    labels = np.zeros(shape, np.uint8)
    labels[sl] = labels_box
    tis = np.zeros((3, *shape), np.float32)
    for j, key in enumerate(("csf", "gm", "wm")):
        tis[(j, *sl)] = tissue[key] * brain
    return image, labels, tis


def _case_stats(
    params: CaseParams, prof: SiteProfile, labels: np.ndarray, n_lesions: int, drawn: dict
) -> dict:
    """The case's stats: site, drawn and rendered volumes, lesions, acquisition parameters."""
    spacing = params.spacing
    vox_ml = spacing**3 / 1000.0
    return {
        "site": prof.name,
        "spacing": spacing,
        "wt_ml_drawn": params.wt_ml,
        "core_ml_drawn": params.core_ml,
        "volumes_ml": {name: float((labels == v).sum() * vox_ml)
                       for name, v in (("NCR", L.NCR), ("ED", L.ED), ("ET", L.ET))},
        "wt_ml": float((labels > 0).sum() * vox_ml),
        "has_et": params.has_et,
        "open_ring": params.open_ring,
        "n_lesions": n_lesions,
        "mass_effect_k": params.mass_effect_k,
        **drawn,
    }


def _render_case(params: CaseParams, prof: SiteProfile, warp: Warp, coarse: Coarse
                 ) -> SyntheticCase:
    """Render ``params`` in the tight box around the brain, then place it on the whole grid."""
    spacing = params.spacing
    lo, hi, box, maybe = _case_box(coarse, spacing)
    lesions = [Lesion(centre=np.asarray(d["centre"], np.float64) - lo,  # box coordinates
                      core_vox=int(d["core_vox"]), rot=np.asarray(d["rot"], np.float64),
                      axes=np.asarray(d["axes"], np.float64), rim_mm=float(d["rim_mm"]))
               for d in params.lesions]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = params.render_state

    tissue, brain = _box_tissue(params, warp, coarse, lo, hi, box, maybe, lesions)
    labels_box = tumour_labels(rng, prof, lesions, tissue, brain,
                               int(round(params.wt_ml * 1000.0 / spacing**3)), spacing,
                               params.has_et, params.open_ring)
    image_box, drawn = _render(rng, prof, tissue, labels_box, brain, spacing, params.has_et)
    image, labels, tis = _to_grid(spacing, lo, hi, image_box, labels_box, tissue, brain)
    stats = _case_stats(params, prof, labels, len(lesions), drawn)
    return SyntheticCase(image, labels, tis, grid_affine(spacing), stats, params)


def _tumour_box(labels: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``labels > 0`` grown by ``margin`` voxels."""
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore


def _tumour_fractions(
    tl: np.ndarray, spacing: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Partial-volume fractions of each tumour label in its box, and the healthy share left."""
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
    return fr, keep


def _contrast(
    mod: str, mu: np.ndarray, tissue: dict[str, np.ndarray], texture: np.ndarray,
    tb: tuple[slice, slice, slice], keep: np.ndarray, fr: dict[str, np.ndarray],
    hetero: np.ndarray, brain: np.ndarray, compression: float,
) -> np.ndarray:
    """Contrast ``mod`` before acquisition: tissue means, texture, tumour terms, compression."""
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
    return vol


def _acquire(
    rng: np.random.Generator, prof: SiteProfile, mod: str, mu: np.ndarray, vol: np.ndarray,
    brain: np.ndarray, spacing: float,
) -> tuple[np.ndarray, dict]:
    """Bias field, thick slices and noise, misregistration, gain: one contrast as acquired."""
    b = float(rng.uniform(*prof.bias))
    field = smooth_noise(rng, vol.shape, 60.0 / spacing)
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
    return vol, {"gain": gain, "noise": sigma, "bias": b, "thickness_mm": th, "shift_vox": shift}


def _render(
    rng: np.random.Generator, prof: SiteProfile, tissue: dict[str, np.ndarray],
    labels: np.ndarray, brain: np.ndarray, spacing: float, has_et: bool,
) -> tuple[np.ndarray, dict]:
    """Contrasts ``(4, X, Y, Z)`` float32 of the bbox and the drawn acquisition parameters."""
    shape = labels.shape
    means = _intensities(rng, prof, has_et)
    # tumour terms live in a box around the tumour: partial volume by a slight blur
    tb = _tumour_box(labels, 3)
    fr, keep = _tumour_fractions(labels[tb], spacing)
    tshape = labels[tb].shape
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
        vol = _contrast(mod, mu, tissue, texture, tb, keep, fr, hetero, brain, compression)
        out[ci], drawn = _acquire(rng, prof, mod, mu, vol, brain, spacing)
        params["intensities"][mod] = dict(zip(TISSUES, (float(x) for x in means[mod]),
                                              strict=True))
        for key, value in drawn.items():
            params[key][mod] = value
    params["compression"] = compression
    return out, params


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
    rec = linear_rows(np.interp(zz, centres, np.arange(len(centres))), len(centres))
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

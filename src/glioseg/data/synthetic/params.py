"""The parameters of a synthetic case, drawn before anything is rendered (``draw_case``).

Every case is a pure function of ``(seed, index, site, spacing)``, in two steps (the design of
``train/augment.py``): ``draw_case`` draws its parameters (``CaseParams``: warp, tumour size,
place and shape, and the random state the rendering draws its noise from), ``render_case``
(``glioseg.data.synthetic.render``) renders from them alone; the parameters are saved in each
case's marker (``.synthetic.json``, ``params``), so a case can be rendered again from them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from glioseg.data.sites import SiteProfile, get_site
from glioseg.data.synthetic.anatomy import Coarse, Warp, coarse_pass, draw_warp_params, make_warp
from glioseg.data.synthetic.grid import check_spacing
from glioseg.data.synthetic.tumour import (
    CORE_REACH,
    LESION_GAP_MM,
    WT_REACH,
    Lesion,
    edema_margin,
    pick_centres,
    sphere_radius,
)


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


def draw_case_with_geometry(
    seed: int, index: int, prof: SiteProfile, spacing: float
) -> tuple[CaseParams, Warp, Coarse]:
    """``draw_case``, also returning the warp and coarse pass it placed the lesions with."""
    rng = case_rng(seed, index)
    scale, angles, shift, ctrl = draw_warp_params(rng, prof)
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
    check_spacing(spacing)
    return draw_case_with_geometry(seed, index, prof, spacing)[0]

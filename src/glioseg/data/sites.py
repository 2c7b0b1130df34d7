"""Site (domain) profiles of the synthetic cohort generator.

A profile holds every knob that differs between acquisition sites: noise, bias field, slice
thickness of the 2D contrasts, misregistration, scanner gain, contrast compression, the tissue
intensity table and the tumour population (size, share without enhancing tumour, multifocal
share). ``source`` imitates the clean BraTS centres; ``target`` imitates a low-resource site
(BraTS-Africa-like: thicker slices, stronger bias, more noise, somewhat compressed contrast,
larger tumours presented late, more tumours without enhancement); ``target-severe`` is a
harsher version of it (the ``target`` of glioseg before 2026-12) for stress tests.

Calibration (``scripts/calibrate_target_site.py``, ``docs/synthetic-sites.md``): published
transfer of BraTS 2021 glioma models to BraTS-SSA loses about 20% of mean Dice (arXiv
2412.14100), so ``target`` is set for a loss of 15-25%. A source model trained 1,200 steps (small
preset, 2 mm, 16 source cases; validation Dice 0.962 / 0.978 / 0.954) scored mean Dice 0.966 on
8 new source cases, 0.799 on 8 ``target`` cases (17% lost) and 0.459 on 8 ``target-severe``
cases (52% lost). FLAIR stays the contrast on which edema is brightest: mean edema intensity
over the brain's median is 1.56 on ``source``, 1.33 on ``target`` and 1.23 on
``target-severe`` (contrast compression towards the brain mean is what flattens it most).

Intensities are relative (white matter on T1 ~0.87) and become scanner units through ``gain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from glioseg.errors import InputError

Range = tuple[float, float]

TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "edema", "necrosis", "enhancing")
"""Tissue classes of the intensity model, in the column order of ``SiteProfile.intensities``."""

# (lo, hi) per contrast (t1, t1ce, t2, flair) and tissue (csf, gm, wm, edema, necrosis, enhancing).
# T1 values of CSF/GM/WM match the MNI152 2009 template (0.28, 0.65, 0.87); edema is only
# mildly hypointense on T1 (between grey and white matter).
SOURCE_INTENSITIES: dict[str, tuple[Range, ...]] = {
    "t1": ((0.25, 0.35), (0.60, 0.68), (0.84, 0.90), (0.64, 0.74), (0.28, 0.42), (0.55, 0.68)),
    "t1ce": ((0.25, 0.35), (0.60, 0.70), (0.84, 0.90), (0.64, 0.74), (0.28, 0.42), (1.05, 1.40)),
    "t2": ((0.95, 1.00), (0.50, 0.58), (0.36, 0.44), (0.70, 0.85), (0.75, 0.98), (0.55, 0.70)),
    "flair": ((0.06, 0.14), (0.52, 0.60), (0.42, 0.48), (0.85, 1.00), (0.35, 0.75), (0.65, 0.80)),
}

# Older low-field scanners and 2D spin-echo T1: flatter grey/white contrast, weaker
# gadolinium enhancement, incomplete CSF suppression on FLAIR.
TARGET_INTENSITIES: dict[str, tuple[Range, ...]] = {
    "t1": ((0.30, 0.40), (0.64, 0.70), (0.78, 0.84), (0.64, 0.72), (0.32, 0.44), (0.58, 0.68)),
    "t1ce": ((0.30, 0.40), (0.64, 0.72), (0.78, 0.84), (0.64, 0.72), (0.32, 0.44), (0.92, 1.15)),
    "t2": ((0.85, 0.95), (0.52, 0.60), (0.40, 0.47), (0.68, 0.82), (0.72, 0.92), (0.55, 0.68)),
    "flair": ((0.12, 0.24), (0.55, 0.62), (0.46, 0.52), (0.80, 0.95), (0.40, 0.72), (0.62, 0.76)),
}

# Solid non-enhancing tumour (cases without enhancing tumour): T1 dark, T2/FLAIR bright.
NON_ENHANCING: dict[str, Range] = {
    "t1": (0.40, 0.50), "t1ce": (0.40, 0.52), "t2": (0.75, 0.90), "flair": (0.78, 0.95),
}


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and population knobs of one site; every ``Range`` is drawn uniformly per case.

    Attributes:
        name: profile name (``--site``).
        tag: BraTS 2023 challenge tag used in case ids (``GLI``, ``SSA``).
        noise: Rician noise sigma as a fraction of the white-matter intensity.
        bias: log-std of the multiplicative bias field.
        thickness: slice thickness (mm) of T1, T2 and FLAIR (2D acquisitions).
        thickness_t1ce: slice thickness (mm) of T1ce.
        misregistration: largest integer shift (voxels) of T1, T2, FLAIR against T1ce.
        gain: scanner gain (relative intensity -> stored integer units).
        compression: contrast compression towards the brain mean (1 = none).
        intensities: per contrast, (lo, hi) per tissue in ``TISSUES`` order.
        wt_median_ml: median whole-tumour volume (log-normal), mL.
        wt_sigma: log-normal sigma of the whole-tumour volume.
        wt_range_ml: whole-tumour volume is clipped to this range, mL.
        core_fraction: tumour core share of the whole tumour.
        no_et: probability of a tumour without enhancing tumour.
        multifocal: probability of two lesions.
        open_ring: probability of an incomplete enhancing ring.
        elastic_mm: std of the elastic warp's control displacements, mm.
    """

    name: str
    tag: str
    noise: Range
    bias: Range
    thickness: Range
    thickness_t1ce: Range
    misregistration: int
    gain: Range
    compression: Range
    intensities: dict[str, tuple[Range, ...]] = field(default_factory=lambda: SOURCE_INTENSITIES)
    wt_median_ml: float = 80.0
    wt_sigma: float = 0.6
    wt_range_ml: Range = (20.0, 300.0)
    core_fraction: Range = (0.15, 0.6)
    no_et: float = 0.10
    multifocal: float = 0.12
    open_ring: float = 0.2
    elastic_mm: float = 2.5


SITES: dict[str, SiteProfile] = {
    "source": SiteProfile(
        name="source",
        tag="GLI",
        noise=(0.01, 0.03),
        bias=(0.05, 0.25),
        thickness=(1.0, 3.0),
        thickness_t1ce=(1.0, 1.0),
        misregistration=0,
        gain=(300.0, 3000.0),
        compression=(1.0, 1.0),
    ),
    "target": SiteProfile(
        name="target",
        tag="SSA",
        noise=(0.03, 0.06),
        bias=(0.20, 0.40),
        thickness=(3.0, 5.0),
        thickness_t1ce=(1.0, 3.0),
        misregistration=1,
        gain=(50.0, 400.0),
        compression=(0.85, 0.95),
        intensities=TARGET_INTENSITIES,
        wt_median_ml=110.0,
        wt_sigma=0.5,
        no_et=0.25,
        multifocal=0.15,
        open_ring=0.35,
    ),
}
# The harsh shift: the same population and contrasts, noisier, more biased, thicker slices and
# contrast compressed 0.5-0.8 towards the brain mean (52% of a source model's Dice lost).
SITES["target-severe"] = replace(SITES["target"], name="target-severe", noise=(0.04, 0.08),
                                 bias=(0.30, 0.50), thickness=(4.0, 6.0),
                                 compression=(0.5, 0.8))


def get_site(name: str) -> SiteProfile:
    """The profile called ``name``; ValueError listing the known ones otherwise."""
    try:
        return SITES[name]
    except KeyError:
        raise InputError(f"unknown site profile {name!r}; known: {', '.join(SITES)}") from None

"""Realistic synthetic BraTS-like cohorts: anatomy from MNI152, tumours, site effects.

Site profiles (``glioseg.data.sites``): ``source`` (clean BraTS centres), ``target`` (a
low-resource site, calibrated so that a well-trained source model loses 17% of its mean Dice
on it, within the ~20% published for BraTS 2021 -> BraTS-SSA transfer, arXiv 2412.14100; see
``docs/synthetic-sites.md``) and ``target-severe`` (a harsh shift: 52% lost).

Recipe (in the spirit of SynthSeg / lab2im, Billot et al. 2023, and of Hu et al. 2023), one
module per step:

- ``grid``: the BraTS SRI24 grid at any spacing and the smooth random fields drawn on it;
- ``anatomy``: the MNI152 template (shipped inside the nilearn wheel), a random affine and
  elastic warp per case, tissue fractions sampled onto the grid;
- ``params``: ``draw_case(seed, index, site, spacing) -> CaseParams``, everything a case
  draws before it is rendered (a plain dataclass saved beside each case);
- ``tumour``: lesion placement, core shape, necrosis and enhancing rim, mass effect, edema;
- ``render``: ``render_case(params)``: labels, contrasts, site effects and acquisition;
  ``generate_case`` is ``render_case(draw_case(...))``;
- ``cohort``: ``write_cohort``, every case in a published BraTS layout, resumable, parallel.

Every case is a pure function of ``(seed, index, site, spacing)``; the same seed gives the
same bytes whatever the number of worker processes.

The names below are the package's entry points (``from glioseg.data.synthetic import
write_cohort``); the rest is imported from the module that defines it.
"""

from glioseg.data.synthetic.cohort import (
    GENERATOR_VERSION,
    MARKER,
    cohort_digest,
    describe_sites,
    write_cohort,
)
from glioseg.data.synthetic.grid import SynthError, grid_affine, grid_shape
from glioseg.data.synthetic.params import CaseParams, draw_case
from glioseg.data.synthetic.render import SyntheticCase, generate_case, render_case

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "CaseParams",
    "SynthError",
    "SyntheticCase",
    "cohort_digest",
    "describe_sites",
    "draw_case",
    "generate_case",
    "grid_affine",
    "grid_shape",
    "render_case",
    "write_cohort",
]

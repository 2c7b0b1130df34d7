"""Site profiles: the calibrated ``target`` shift sits between ``source`` and
``target-severe``, and edema stays the brightest tissue on its FLAIR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glioseg.data.sites import SITES, get_site
from glioseg.data.synthetic import generate_case

CALIBRATION = Path(__file__).resolve().parents[1] / "docs" / "figures" / \
    "target-site-calibration.json"


def _mid(r: tuple[float, float]) -> float:
    return (r[0] + r[1]) / 2


def test_unknown_site_lists_the_known_ones():
    with pytest.raises(ValueError, match="source, target"):
        get_site("nowhere")
    assert {"source", "target"} <= set(SITES)


def test_target_is_milder_than_target_severe_and_harsher_than_source():
    src, tgt, sev = SITES["source"], SITES["target"], SITES["target-severe"]
    for knob in ("noise", "bias", "thickness"):  # larger is harsher
        assert _mid(getattr(src, knob)) < _mid(getattr(tgt, knob)) \
            <= _mid(getattr(sev, knob)), knob
    # compression: 1 is none, smaller flattens contrast
    assert _mid(src.compression) > _mid(tgt.compression) > _mid(sev.compression)
    assert tgt.tag == sev.tag == "SSA"


def _flair_means(site: str, n: int = 3) -> dict[str, float]:
    """Mean FLAIR of edema, grey and white matter (tumour-free voxels) over ``n`` 4 mm cases,
    each over the brain's median."""
    out: dict[str, list[float]] = {"edema": [], "gm": [], "wm": []}
    for i in range(n):
        case = generate_case(3, i, site, spacing=4.0)
        flair, labels = case.image[3], case.labels
        median = np.median(flair[flair > 0])
        healthy = labels == 0
        out["edema"].append(flair[labels == 2].mean() / median)
        out["gm"].append(flair[healthy & (case.tissue[1] > 0.6)].mean() / median)
        out["wm"].append(flair[healthy & (case.tissue[2] > 0.6)].mean() / median)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.slow
def test_edema_stays_the_brightest_flair_tissue_on_the_target_site():
    source, target = _flair_means("source"), _flair_means("target")
    assert target["edema"] > 1.15  # the old target gave 1.09-1.12 at 2 mm
    assert target["edema"] > target["gm"] + 0.1 and target["edema"] > target["wm"] + 0.1
    assert source["edema"] > target["edema"]


def test_recorded_calibration_is_within_the_published_range():
    """The calibration behind the profile (scripts/calibrate_target_site.py, docs): ``target``
    costs a source model 15-25% of its mean Dice (published SSA transfer: ~20%)."""
    sites = json.loads(CALIBRATION.read_text())["sites"]
    assert 0.15 <= sites["target"]["relative_loss"] <= 0.25
    assert sites["target-severe"]["relative_loss"] > 0.25

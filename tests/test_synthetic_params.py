"""``glioseg.data.synthetic.params``: a case's parameters are drawn before anything is
rendered, from ``(seed, index, site, spacing)`` alone, and are enough to render it again."""

from __future__ import annotations

import json

import numpy as np

from glioseg.data.synthetic.params import CaseParams, draw_case
from glioseg.data.synthetic.render import generate_case, render_case


def test_a_case_renders_again_from_its_recorded_parameters():
    """draw_case then render_case (through JSON) is generate_case, bit for bit."""
    case = generate_case(7, 0, "target", 6.0)  # multifocal
    params = draw_case(7, 0, "target", 6.0)
    assert params == case.params
    again = render_case(CaseParams.from_dict(json.loads(json.dumps(params.to_dict()))))
    for a, b in ((again.image, case.image), (again.labels, case.labels),
                 (again.tissue, case.tissue)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert again.stats == case.stats


def test_draw_case_is_a_pure_function_of_its_arguments():
    """The same arguments draw equal parameters (through JSON too); another index, seed or
    site draws others; the drawn volumes and lesions are the site's kind."""
    a = draw_case(3, 2, "source", 6.0)
    assert a == draw_case(3, 2, "source", 6.0)
    assert CaseParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    for other in (draw_case(3, 3, "source", 6.0), draw_case(4, 2, "source", 6.0),
                  draw_case(3, 2, "target", 6.0)):
        assert other != a
    assert (a.seed, a.index, a.site, a.spacing) == (3, 2, "source", 6.0)
    assert 0.0 < a.core_ml < a.wt_ml
    assert len(a.lesions) in (1, 2)
    for les in a.lesions:
        rot = np.asarray(les["rot"])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)  # a rotation
        assert 2.0 <= les["rim_mm"] <= 6.0

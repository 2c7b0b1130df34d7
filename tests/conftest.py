"""Shared fixtures: a tiny synthetic cohort written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three 2 mm synthetic cases in the brats2021 layout (source site, seed 0).

    Written with ``write_cohort``; read-only for tests (copy before modifying).
    """
    from glioseg.data.synthetic import write_cohort

    out = tmp_path_factory.mktemp("synth_cohort")
    return write_cohort(out, n_cases=3, layout="brats2021", site="source", seed=0, spacing=2.0)

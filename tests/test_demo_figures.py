"""The demo's figures (``glioseg.report.demo_figures``): bars and dots of the Dice table,
learning curves of the target arms, read back from the figure before it is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from glioseg.report import demo_figures as DF


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    real = DF.save_figure

    def keep(fig: Any, path: Path, **kw: Any) -> Path:
        ax = fig.axes[0]
        figures.append({"bars": [p.get_height() for p in ax.patches],
                        "dots": [list(c.get_offsets()[:, 1]) for c in ax.collections],
                        "lines": [list(line.get_ydata()) for line in ax.lines]})
        return real(fig, path, **kw)

    monkeypatch.setattr(DF, "save_figure", keep)
    return figures


def test_dice_bars_per_region_and_mean_with_the_cases_as_dots(tmp_path, drawn) -> None:
    rows = [{"model": "scratch", "label": "scratch", "WT": 0.5, "TC": 0.4, "ET": 0.3,
             "mean": 0.4}]
    per_case = {"scratch": [{"WT_dice": "0.4", "TC_dice": "0.3", "ET_dice": "0.2"},
                            {"WT_dice": "0.6", "TC_dice": "0.5", "ET_dice": "0.4"}]}
    DF.plot_dice(tmp_path / "dice.png", rows, per_case)
    assert drawn[0]["bars"] == [0.5, 0.4, 0.3, 0.4]
    assert drawn[0]["dots"] == [[0.4, 0.6], [0.3, 0.5], [0.2, 0.4]]  # no dots on the mean
    assert (tmp_path / "dice.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_mean_and_wt_per_arm_and_the_source_line(tmp_path, drawn) -> None:
    recs = [{"step": 10.0, "dice_mean": 0.2, "dice_WT": 0.3},
            {"step": 20.0, "dice_mean": 0.4, "dice_WT": 0.5}]
    DF.plot_curves(tmp_path / "curves.png", {"scratch": recs, "transfer": []}, 0.35, 4)
    assert drawn[0]["lines"] == [[0.2, 0.4], [0.3, 0.5], [0.35, 0.35]]  # empty arm: no line
    DF.plot_curves(tmp_path / "c2.png", {"scratch": recs}, float("nan"), 4)
    assert len(drawn[1]["lines"]) == 2  # no source line when its Dice is unknown

"""The study's figures (``glioseg.report.study_figures``): what each one draws, read back from
the matplotlib figure before it is saved, and that each is a PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from glioseg.report import study_figures as SF


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots save (each is still written, through the real save_figure)."""
    figures: list[Any] = []
    real = SF.save_figure

    def keep(fig: Any, path: Path, **kw: Any) -> Path:
        lines = [[(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]
                 for ax in fig.axes]
        bars = [[p.get_height() for p in ax.patches] for ax in fig.axes]
        figures.append({"lines": lines, "bars": bars, "title": fig.axes[0].get_title()})
        return real(fig, path, **kw)

    monkeypatch.setattr(SF, "save_figure", keep)
    return figures


def _summary(arm: str, n: int, mean: float) -> dict[str, Any]:
    row: dict[str, Any] = {"arm": arm, "n_labelled": n, "seeds": 3, "steps": 100,
                           "reached": 3 if arm != "scratch" else 2}
    for key in SF.REGION_KEYS:
        row[key], row[f"{key}_sd"], row[f"{key}_ci"] = mean, 0.01, 0.05
    row["steps_to_target"], row["steps_to_target_sd"] = (50.0, 5.0) if arm != "scratch" \
        else (math.nan, math.nan)
    row["seconds_to_target"], row["seconds_to_target_sd"] = 12.0, 1.0
    return row


def test_curves_draw_the_given_mean_curves_and_reference_lines(tmp_path, drawn) -> None:
    curves = {"scratch": [(10.0, 0.2), (20.0, 0.4)], "source/full": [(10.0, 0.5), (20.0, 0.6)]}
    SF.plot_curves(tmp_path / "curves.png", curves, 2, scratch_final=0.4, zero_shot=0.3)
    lines = drawn[0]["lines"][0]
    assert lines[0] == ([10.0, 20.0], [0.2, 0.4]) and lines[1] == ([10.0, 20.0], [0.5, 0.6])
    assert [y for _, y in lines[2:]] == [[0.4, 0.4], [0.3, 0.3]]  # scratch final, zero-shot
    assert drawn[0]["title"] == "Learning curves with 2 labelled target cases"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_dice_vs_labelled_one_panel_per_dice_key(tmp_path, drawn) -> None:
    summary = [_summary("scratch", 1, 0.3), _summary("scratch", 4, 0.5),
               _summary("source/full", 1, 0.6), _summary("source/full", 4, 0.7)]
    SF.plot_dice_vs_labelled(tmp_path / "d.png", summary, zero_shot=0.55)
    assert len(drawn[0]["lines"]) == len(SF.REGION_KEYS) == 4
    first = drawn[0]["lines"][0]
    assert ([1, 4], [0.3, 0.5]) in first and ([1, 4], [0.6, 0.7]) in first


def test_time_to_target_bars_and_sequence_sets(tmp_path, drawn) -> None:
    summary = [_summary("scratch", 2, 0.4), _summary("source/full", 2, 0.6)]
    SF.plot_time_to_target(tmp_path / "t.png", summary)
    assert drawn[0]["bars"][0] == [0.0, 50.0]  # scratch never reached in every seed: no bar
    rows = [{"arm": arm, "n_labelled": 2, **{k: v for k in SF.REGION_KEYS}}
            for arm, v in (("seq-scratch", 0.2), ("seq-scratch", 0.4), ("seq-source", 0.5))]
    SF.plot_sequence_sets(tmp_path / "s.png", rows, ("flair", "t1ce"), ("t2", "t1"))
    # scratch's bars (mean of its two seeds) for WT/TC/ET/mean, then the fine-tuned one's
    assert drawn[1]["bars"][0] == pytest.approx([0.3] * 4 + [0.5] * 4)

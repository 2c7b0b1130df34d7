"""Figures of an evaluation: box plots of Dice and HD95 per region, and slice overlays of the
best, median and worst case by WT Dice (prediction beside reference).

Every PNG is written to a temporary name in the output folder, then renamed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from glioseg.data.labels import REGIONS


def _save_atomic(fig, path: Path, dpi: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def box_plot(
    rows: Sequence[Mapping[str, float]],
    output: str | Path,
    metrics: Sequence[str] = ("dice", "hd95"),
) -> Path:
    """One panel per metric, one box per region (WT, TC, ET), over the cases in ``rows``.

    Args:
        rows: per-case dicts with ``<region>_<metric>`` keys (``per_case.csv`` rows).
        output: PNG path.
        metrics: metrics to draw, one panel each.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"dice": "Dice", "hd95": "HD95", "lesion_dice": "Lesion-wise Dice",
              "lesion_hd95": "Lesion-wise HD95", "sensitivity": "Sensitivity",
              "specificity": "Specificity"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [np.array([float(r[f"{region}_{metric}"]) for r in rows]) for region in REGIONS]
        ax.boxplot(data, tick_labels=list(REGIONS), showmeans=True)
        rng = np.random.default_rng(0)  # fixed jitter: the same figure every run
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.5)
        ax.set_title(f"{titles.get(metric, metric)} ({len(rows)} cases)")
        if metric.endswith("dice"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return _save_atomic(fig, Path(output))
    finally:
        plt.close(fig)


def pick_cases(rows: Sequence[Mapping[str, float]], key: str = "WT_dice") -> dict[str, str]:
    """Case ids of the best, median and worst case by ``key`` (ties broken by case id)."""
    if not rows:
        raise ValueError("no cases to pick from")
    ordered = sorted(rows, key=lambda r: (float(r[key]), str(r["case_id"])))
    return {
        "best": str(ordered[-1]["case_id"]),
        "median": str(ordered[(len(ordered) - 1) // 2]["case_id"]),
        "worst": str(ordered[0]["case_id"]),
    }


def write_eval_figures(
    rows: Sequence[Mapping[str, float]],
    out_dir: str | Path,
    case_folders: Mapping[str, Path],
    predictions: Mapping[str, Path | None],
    metrics: Sequence[str] = ("dice", "hd95"),
) -> dict[str, Path]:
    """The box plot and the best/median/worst overlays of an evaluation.

    Args:
        rows: per-case scores (``case_id`` and ``<region>_<metric>`` keys).
        out_dir: folder for ``boxplot.png`` and ``overlay_<which>_<case_id>.png``.
        case_folders: case id -> case folder (for ``glioseg.report.figures.show_case``).
        predictions: case id -> prediction file (None: missing, reference shown alone).

    Returns:
        name -> PNG path (``boxplot``, ``overlay_best``, ``overlay_median``, ``overlay_worst``).
    """
    from glioseg.report.figures import show_case

    out_dir = Path(out_dir)
    paths = {"boxplot": box_plot(rows, out_dir / "boxplot.png", metrics)}
    for which, case_id in pick_cases(rows).items():
        output = out_dir / f"overlay_{which}_{case_id}.png"
        paths[f"overlay_{which}"] = show_case(
            case_folders[case_id], output, pred=predictions.get(case_id), views=("axial",)
        )
    return paths

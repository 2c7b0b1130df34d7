"""Figures of an evaluation: box plots of Dice and HD95 per region, and slice overlays of the
best, median and worst case by WT Dice (prediction beside reference).

Every PNG is written to a temporary name in the output folder, then renamed.
``draw_evaluation_figures`` draws them for an ``evaluate_folder`` result (``glioseg evaluate
--figures``, the demo).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from glioseg.data.labels import REGIONS
from glioseg.evaluate.folder import LESION_METRICS, EvaluationResult
from glioseg.report.savefig import save_figure


def box_plot(
    rows: Sequence[Mapping[str, float]],
    output: str | Path,
    metrics: Sequence[str] = ("dice", "hd95"),
    distance_unit: str = "voxel",
) -> Path:
    """One panel per metric, one box per region (WT, TC, ET), over the cases in ``rows``.

    Boxes: quartiles and median; whiskers 1.5 IQR; triangle: mean; dots: the cases.

    Args:
        rows: per-case dicts with ``<region>_<metric>`` keys (``per_case.csv`` rows).
        output: PNG path.
        metrics: metrics to draw, one panel each.
        distance_unit: ``voxel`` or ``mm``, the unit of the HD95 axes.
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
        if metric.endswith("hd95"):
            unit = "voxels" if distance_unit == "voxel" else distance_unit
            if metric == "lesion_hd95":  # always mm: the header spacing, as BraTS 2023 scores
                unit = "mm"
            ax.set_ylabel(f"{unit}, lower is better")
        else:
            ax.set_ylabel("higher is better")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, output, dpi=120)


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


def overlay_caption(which: str, row: Mapping[str, float], key: str = "WT_dice") -> str:
    """The line above an overlay: which pick it is, by what, and the case's Dice per region."""
    dices = "  ".join(f"{r} {float(row[f'{r}_dice']):.3f}" for r in REGIONS)
    by = key.replace("_dice", " Dice").replace("_", " ")
    text = f"{which} case by {by}: {row['case_id']}   Dice {dices}"
    if int(row.get("missing_prediction", 0)):
        text += "   (no prediction: scored as empty)"
    return text


def caption_png(path: Path, text: str, dpi: int = 110) -> Path:
    """Redraw the PNG at ``path`` with ``text`` in a strip above it (white on black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = plt.imread(path)
    height, width = image.shape[:2]
    strip = 30
    fig = plt.figure(figsize=(width / dpi, (height + strip) / dpi), dpi=dpi, facecolor="black")
    ax = fig.add_axes((0, 0, 1, height / (height + strip)))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.5 * strip / (height + strip), text, color="white", ha="center",
             va="center", fontsize=10)
    return save_figure(fig, path, dpi=dpi, bbox_inches=None, facecolor="black")


def write_eval_figures(
    rows: Sequence[Mapping[str, float]],
    out_dir: str | Path,
    case_folders: Mapping[str, Path],
    predictions: Mapping[str, Path | None],
    metrics: Sequence[str] = ("dice", "hd95"),
    distance_unit: str = "voxel",
    pred_labels: str | None = None,
    ref_labels: str | None = None,
) -> dict[str, Path]:
    """The box plot and the best/median/worst overlays of an evaluation.

    Args:
        rows: per-case scores (``case_id`` and ``<region>_<metric>`` keys).
        out_dir: folder for ``boxplot.png`` and ``overlay_<which>_<case_id>.png``.
        case_folders: case id -> case folder (for ``glioseg.report.figures.show_case``).
        predictions: case id -> prediction file (None: missing, reference shown alone).
        metrics: box-plot panels.
        distance_unit: ``voxel`` or ``mm``, for the HD95 axes.
        pred_labels: label scheme of the predictions when it is not the cases' own.
        ref_labels: label scheme declared for the references (``--ref-labels``), if any.

    Returns:
        name -> PNG path (``boxplot``, ``overlay_best``, ``overlay_median``, ``overlay_worst``).
    """
    from glioseg.report.figures import show_case

    out_dir = Path(out_dir)
    paths = {"boxplot": box_plot(rows, out_dir / "boxplot.png", metrics, distance_unit)}
    by_id = {str(r["case_id"]): r for r in rows}
    for which, case_id in pick_cases(rows).items():
        output = out_dir / f"overlay_{which}_{case_id}.png"
        show_case(case_folders[case_id], output, pred=predictions.get(case_id), views=("axial",),
                  pred_labels=pred_labels, labels=ref_labels)
        paths[f"overlay_{which}"] = caption_png(output, overlay_caption(which, by_id[case_id]))
    return paths


def draw_evaluation_figures(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """``write_eval_figures`` of what ``evaluate_folder`` scored, into its output folder
    ``out_dir``: Dice and HD95 panels (and the lesion-wise ones under brats2023). The PNG
    paths are added to ``result.paths`` and returned."""
    scheme = result.summary["scheme"]
    panels = ("dice", "hd95") + (LESION_METRICS if scheme == "brats2023" else ())
    paths = write_eval_figures(result.rows, out_dir, result.case_folders, result.predictions,
                               panels, result.summary["distance_unit"], result.pred_label_scheme,
                               result.ref_label_scheme)
    result.paths.update(paths)
    return paths

"""``glioseg plot RUN_DIR``: training loss and validation Dice curves of a run (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glioseg.report.figures import FigureError
from glioseg.report.savefig import save_figure

REGION_COLOURS = {"WT": "tab:green", "TC": "tab:orange", "ET": "tab:red"}


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    return [s for s, _ in rows], [float(v) for _, v in rows]


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw the training loss (left) and the validation Dice per region (right) of a run.

    Args:
        run_dir: a training run folder (with ``metrics.jsonl``).
        output: PNG path; default ``RUN_DIR/curves.png``. Written atomically.

    Raises:
        FigureError: when the folder has no metrics or no training record.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glioseg.metrics_log import METRICS_NAME, read_metrics
    from glioseg.records import RecordsError

    run_dir = Path(run_dir)
    try:  # lenient: a torn or bad line is skipped, as `glioseg report` does
        records = read_metrics(run_dir, strict=False)
    except RecordsError as exc:  # no metrics.jsonl
        raise FigureError(str(exc)) from None
    steps, loss = _series(records, "train", "loss")
    if not steps:
        raise FigureError(f"{run_dir / METRICS_NAME}: no training record to plot")
    output = Path(output) if output is not None else run_dir / "curves.png"
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax_loss.plot(steps, loss, color="tab:blue", lw=1.2)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (Dice + BCE)")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    for region, colour in REGION_COLOURS.items():
        vs, vd = _series(records, "val", f"dice_{region}")
        if vs:
            ax_dice.plot(vs, vd, marker="o", ms=3, color=colour, label=region)
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlim(0, max(steps) * 1.02)
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_title("validation Dice per region")
    ax_dice.grid(alpha=0.3)
    if ax_dice.lines:
        ax_dice.legend(loc="lower right")
    fig.suptitle(run_dir.name)
    return save_figure(fig, output, dpi=110, bbox_inches=None)

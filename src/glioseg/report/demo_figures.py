"""The demo's figures: the Dice table as bars (``dice.png``) and the target arms' learning
curves (``curves.png``), drawn from the rows and validation records ``glioseg.demo`` reads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glioseg.data.labels import REGIONS
from glioseg.report.savefig import save_figure


def plot_dice(path: Path, rows: Sequence[Mapping[str, Any]], per_case: Mapping[str, Any]
              ) -> Path:
    """Bars: mean Dice per region and model on the target test cases; dots: the cases.

    ``per_case``: model -> list of per-case rows of ``per_case.csv`` (``WT_dice`` ...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"source-only": "tab:gray", "scratch": "tab:blue", "transfer": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / max(len(rows), 1)
    for j, r in enumerate(rows):
        for i, region in enumerate((*REGIONS, "mean")):
            x = i + (j - (len(rows) - 1) / 2) * width
            ax.bar(x, r[region], width * 0.95, color=colors.get(r["model"], "tab:green"),
                   label=r["label"] if i == 0 else None)
            if region != "mean":
                vals = [float(c[f"{region}_dice"]) for c in per_case.get(r["model"], [])]
                ax.scatter([x] * len(vals), vals, s=9, color="k", zorder=3)
    ax.set_xticks(range(len(REGIONS) + 1), [*REGIONS, "mean"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice on the held-out target cases")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Target site: source model vs scratch vs transfer (bars: mean, dots: cases)")
    return save_figure(fig, path)


def plot_curves(path: Path, curves: Mapping[str, Sequence[Mapping[str, float]]],
                zero_shot: float | None, n_train: int) -> Path:
    """Validation Dice on the target test cases vs step, one line per target arm (mean of
    WT/TC/ET solid, WT dashed); the source model's table mean as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"scratch": "tab:blue", "transfer": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm, recs in curves.items():
        if not recs:
            continue
        steps = [r["step"] for r in recs]
        ax.plot(steps, [r["dice_mean"] for r in recs], marker="o", color=colors.get(arm),
                label=f"{arm}: mean of WT/TC/ET")
        ax.plot(steps, [r["dice_WT"] for r in recs], ls="--", color=colors.get(arm), alpha=0.6,
                label=f"{arm}: WT")
    if zero_shot is not None and not math.isnan(zero_shot):
        ax.axhline(zero_shot, color="grey", ls=":", label="source model, no target labels")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("Dice on the target test cases")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Learning on {n_train} labelled target cases (equal step budgets)")
    return save_figure(fig, path)

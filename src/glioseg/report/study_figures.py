"""The label-efficiency study's figures: test Dice vs labelled cases (``dice_vs_labelled.png``),
time to reach scratch's final Dice (``time_to_target.png``), learning curves at one n
(``curves.png``) and the sequence-set scenario (``sequence_sets.png``), drawn from the study's
summary and result rows (``glioseg.workflows.study_stats``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.data.labels import REGIONS
from glioseg.report.savefig import save_figure

REGION_KEYS: tuple[str, ...] = tuple(f"dice_{r}" for r in (*REGIONS, "mean"))
"""The Dice keys of a summary or result row, one panel or bar group each."""


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def plot_dice_vs_labelled(path: Path, summary: Sequence[Mapping[str, Any]],
                          zero_shot: float | None) -> None:
    """Target test Dice (mean and WT/TC/ET) vs labelled cases, one line per arm (± sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [s for s in summary if not s["arm"].startswith("seq")]
    labels = sorted({s["arm"] for s in main}, key=lambda a: (a != "scratch", a))
    colors = _colors(labels)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), sharey=True)
    for ax, key in zip(axes, REGION_KEYS, strict=True):
        for lab in labels:
            pts = sorted((s for s in main if s["arm"] == lab), key=lambda s: s["n_labelled"])
            x = [s["n_labelled"] for s in pts]
            err = [s.get(f"{key}_ci", s[f"{key}_sd"]) for s in pts]
            err = [0.0 if math.isnan(e) else e for e in err]
            ax.errorbar(x, [s[key] for s in pts], yerr=err,
                        marker="o", capsize=3, label=lab, color=colors[lab],
                        lw=2.5 if lab == "scratch" else 1.5,
                        ls="--" if lab == "scratch" else "-")
        if zero_shot is not None and key == "dice_mean" and not math.isnan(zero_shot):
            ax.axhline(zero_shot, color="grey", ls=":", label="source model, no fine-tuning")
        ax.set_xscale("log", base=2)
        ns = sorted({s["n_labelled"] for s in main})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_title(key.replace("dice_", "Dice ").replace("mean", "mean (WT/TC/ET)"))
        ax.set_xlabel("labelled target cases")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("target test Dice (mean, 95% CI over seeds)")
    handles, names = [], []
    for ax in axes:  # one legend for every panel, outside them: no data hidden under it
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    budgets = ", ".join(f"n={s['n_labelled']}: {s['steps']}" for s in
                        sorted({s["n_labelled"]: s for s in main}.values(),
                               key=lambda s: s["n_labelled"]))
    fig.suptitle(f"Label efficiency: target test Dice after equal budgets per n (steps {budgets})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_time_to_target(path: Path, summary: Sequence[Mapping[str, Any]]) -> None:
    """Steps and seconds to reach scratch's final Dice, grouped by labelled cases; arms that
    never reach it in some seeds are annotated ``k/n``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [s for s in summary if not s["arm"].startswith("seq")]
    labels = sorted({s["arm"] for s in main}, key=lambda a: (a != "scratch", a))
    ns = sorted({s["n_labelled"] for s in main})
    colors = _colors(labels)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    seen: set[str] = set()
    for ax, key, unit in ((axes[0], "steps_to_target", "steps"),
                          (axes[1], "seconds_to_target", "seconds")):
        for i, n in enumerate(ns):
            # the arms run at this n, side by side and centred on the group's tick
            group = [next(s for s in main if s["arm"] == lab and s["n_labelled"] == n)
                     for lab in labels if any(s["arm"] == lab and s["n_labelled"] == n
                                              for s in main)]
            width = 0.8 / max(len(labels), 1)
            for j, s in enumerate(group):
                x = i + (j - (len(group) - 1) / 2) * width
                h = 0.0 if math.isnan(s[key]) else s[key]
                new = s["arm"] not in seen and ax is axes[0]
                seen.add(s["arm"])
                ax.bar(x, h, width, yerr=None if math.isnan(s[key]) else s[f"{key}_sd"],
                       color=colors[s["arm"]], label=s["arm"] if new else None, capsize=2)
                if s["reached"] < s["seeds"]:
                    ax.text(x, h, f"{s['reached']}/{s['seeds']}", ha="center", va="bottom",
                            fontsize=7, rotation=90)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("labelled target cases")
        ax.set_ylabel(f"{unit} to reach scratch's final Dice")
        ax.grid(alpha=0.3, axis="y")
    for i, n in enumerate(ns):  # each n's own budget
        steps_n = next(s["steps"] for s in main if s["n_labelled"] == n)
        axes[0].hlines(steps_n, i - 0.45, i + 0.45, color="grey", ls=":",
                       label="step budget" if i == 0 else None)
    handles, names = axes[0].get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: (names[k] == "step budget",
                                                     labels.index(names[k])
                                                     if names[k] in labels else 0))
    fig.legend([handles[k] for k in order], [names[k] for k in order], fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Time to reach the scratch arm's final Dice (mean ± sd over the seeds that "
                 "reached it; k/n: seeds that did; no bar: none did)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(path: Path, curves: Mapping[str, Sequence[tuple[float, float]]], n: int,
                scratch_final: float | None = None, zero_shot: float | None = None) -> None:
    """Target test Dice vs step at ``n`` labelled cases, one line per arm: ``curves`` maps an
    arm's label to its ``[(step, Dice mean over seeds)]`` (``study_stats.mean_curves``);
    ``scratch_final``: scratch's final Dice (grey line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(list(curves))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for lab, points in curves.items():
        ax.plot([s for s, _ in points], [d for _, d in points], marker="o", color=colors[lab],
                label=lab, lw=2.5 if lab == "scratch" else 1.5,
                ls="--" if lab == "scratch" else "-")
    if scratch_final is not None:
        ax.axhline(scratch_final, color="grey", ls=":", label="scratch final (target)")
    if zero_shot is not None and not math.isnan(zero_shot):
        ax.axhline(zero_shot, color="k", ls="-.", lw=1,
                   label="source model, no fine-tuning")
    ax.set_xlabel("step")
    ax.set_ylabel("target test Dice (mean of WT/TC/ET; mean over seeds)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(f"Learning curves with {n} labelled target cases")
    save_figure(fig, path)


def plot_sequence_sets(path: Path, rows: Sequence[Mapping[str, Any]], src: Sequence[str],
                       tgt: Sequence[str]) -> None:
    """Sequence-set scenario: test Dice per region, scratch vs fine-tuned, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = [r for r in rows if r["arm"].startswith("seq-")]
    ns = sorted({r["n_labelled"] for r in seq})
    arms = ["seq-scratch", "seq-source"]
    colors = {"seq-scratch": "tab:blue", "seq-source": "tab:orange"}
    names = {"seq-scratch": f"seq-scratch: scratch on {'+'.join(tgt).upper()}",
             "seq-source": f"seq-source: fine-tuned from the {'+'.join(src).upper()} model"}
    fig, axes = plt.subplots(1, len(ns), figsize=(6.5 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for j, arm in enumerate(arms):
            rs = [r for r in seq if r["arm"] == arm and r["n_labelled"] == n]
            for i, key in enumerate(REGION_KEYS):
                vals = [float(r[key]) for r in rs]
                x = i + (j - 0.5) * 0.38
                ax.bar(x, float(np.mean(vals)) if vals else 0.0, 0.36, color=colors[arm],
                       label=names[arm] if i == 0 else None, alpha=0.8)
                ax.scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(REGION_KEYS)), [k.replace("dice_", "") for k in REGION_KEYS])
        ax.set_ylim(0, 1)
        ax.set_ylabel("target test Dice")
        ax.set_title(f"{n} labelled target cases")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"Transfer across sequence sets: source {'+'.join(src).upper()} -> target "
                 f"{'+'.join(tgt).upper()} (bars: mean, dots: seeds)")
    save_figure(fig, path)

"""Training curves the report draws from a ``metrics.jsonl`` (when no ``curves.png`` from
``glioseg plot`` lies beside it): one panel per group of keys, returned as PNG bytes."""

from __future__ import annotations

import re
from typing import Any

from glioseg.records import flatten


def _png_bytes(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


SERIES_SUFFIXES = ("wt", "tc", "et", "mean")
"""Last parts of a key that name one curve of a panel (``dice_WT``, ``val_dice/mean``)."""

TITLES = {"dice": "validation Dice", "patches_per_s": "throughput (patches/s)",
          "data_wait": "data wait (fraction of the time)",
          "skipped_steps": "skipped steps (non-finite gradient)"}
"""Panel titles of the groups of glioseg's own ``metrics.jsonl`` keys; others are the group
with spaces for separators."""


def _curve_group(key: str) -> str:
    """The panel of a key: the losses share one, the learning rates one, the regions of a
    metric (``dice_WT``, ``dice_TC``, ...) one; any other key gets its own."""
    low = key.lower()
    if "loss" in low:
        return "loss"
    if low in ("lr", "learning_rate") or low.endswith("/lr") or low.endswith("_lr"):
        return "learning rate"
    parts = re.split(r"[/_.]", key)
    if len(parts) > 1 and (parts[-1].lower() in SERIES_SUFFIXES or parts[-1].isdigit()):
        return key[:len(key) - len(parts[-1]) - 1]
    return key


def _title(group: str) -> str:
    return TITLES.get(group) or re.sub(r"[/_.]+", " ", group)


def _panel_order(groups: list[str]) -> list[str]:
    """Losses first, then the Dice groups, then the others as they came."""
    def rank(g: str) -> int:
        return 0 if g == "loss" else 1 if "dice" in g.lower() else 2
    return sorted(groups, key=rank)


X_KEYS = ("step", "global_step", "iteration", "epoch")
SKIP_KEYS = ("time", "wall_time", "elapsed", "rank", "world_size", "seed", "n_cases")
"""Prefixes of ``metrics.jsonl`` keys that are bookkeeping, not curves."""


def curve_panels(records: list[dict[str, Any]]
                 ) -> tuple[str | None, list[tuple[str, dict[str, tuple[list[float],
                                                                       list[float]]]]]]:
    """The x key and the panels ``curves_png`` draws: ``(title, {key: (xs, ys)})``, at most 6.

    A key needs a numeric value; once one key has two values, a key with a single value
    (a run validated once) is drawn as a marker. No key with two values: no panel.
    """
    xkey = next((k for k in X_KEYS if any(k in r for r in records)), None)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(records):
        x = rec.get(xkey, i) if xkey else i
        for k, v in flatten(rec).items():
            if k == xkey or k.lower().startswith(SKIP_KEYS) or isinstance(v, bool):
                continue
            if isinstance(v, int | float) and isinstance(x, int | float):
                series.setdefault(k, ([], []))
                series[k][0].append(float(x))
                series[k][1].append(float(v))
    if not any(len(s[0]) >= 2 for s in series.values()):
        return xkey, []
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(_curve_group(k), []).append(k)
    return xkey, [(_title(g), {k: series[k] for k in groups[g]})
                  for g in _panel_order(list(groups))[:6]]


def curves_png(records: list[dict[str, Any]], title: str = "training curves") -> bytes | None:
    """Training curves of ``metrics.jsonl`` records: the panels of ``curve_panels``.

    The x axis is the first of ``step``/``global_step``/``iteration``/``epoch`` present, else
    the record index. Returns None when no key has two numeric values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey, panels = curve_panels(records)
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.2 * nrow), squeeze=False)
    xs_all = [x for _, series in panels for xs, _ in series.values() for x in xs]
    lo, hi = min(xs_all), max(xs_all)
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    for ax, (name, series) in zip(axes.flat, panels, strict=False):
        ax.set_xlim(lo - pad, hi + pad)  # one x range: a single validation point sits in time
        if name == TITLES["dice"]:
            ax.set_ylim(0, 1)
        for k, (xs, ys) in series.items():
            ax.plot(xs, ys, lw=1.4, marker="o" if len(xs) < 30 else None,
                    ms=3 if len(xs) > 1 else 6, label=k)
        if name == "learning rate" and all(v > 0 for xs, ys in series.values() for v in ys):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xkey or "record")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png_bytes(fig)


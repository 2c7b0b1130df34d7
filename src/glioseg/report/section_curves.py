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


def _curve_group(key: str) -> str:
    low = key.lower()
    if "loss" in low:
        return "loss"
    if low in ("lr", "learning_rate") or low.endswith("/lr") or low.endswith("_lr"):
        return "learning rate"
    parts = re.split(r"[/_.]", key)
    return "_".join(parts[:-1]) if len(parts) > 1 else key


X_KEYS = ("step", "global_step", "iteration", "epoch")
SKIP_KEYS = ("time", "wall_time", "elapsed", "rank", "world_size", "seed")
"""Prefixes of ``metrics.jsonl`` keys that are bookkeeping, not curves."""


def curves_png(records: list[dict[str, Any]], title: str = "training curves") -> bytes | None:
    """Training curves of ``metrics.jsonl`` records: one panel per group of keys, at most 6.

    The x axis is the first of ``step``/``global_step``/``iteration``/``epoch`` present, else
    the record index. Returns None when no key has two numeric values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    series = {k: s for k, s in series.items() if len(s[0]) >= 2}
    if not series:
        return None
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(_curve_group(k), []).append(k)
    names = list(groups)[:6]
    ncol = min(3, len(names))
    nrow = (len(names) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for k in groups[name]:
            xs, ys = series[k]
            ax.plot(xs, ys, lw=1.4, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        if name == "learning rate" and all(v > 0 for k in groups[name] for v in series[k][1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xkey or "record")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png_bytes(fig)


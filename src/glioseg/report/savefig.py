"""The one way a figure reaches disk: PNG, written atomically, then the figure is closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glioseg.io_atomic import atomic_path


def save_figure(fig: Any, path: str | Path, dpi: int = 110, bbox_inches: str | None = "tight",
                **options: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically (temporary file beside it, then
    rename) and close it, also when saving fails; returns ``path``.

    ``bbox_inches=None`` keeps the figure's own size; ``options`` go to ``savefig``
    (e.g. ``facecolor="black"``).
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches, format="png", **options)
    finally:
        plt.close(fig)
    return path

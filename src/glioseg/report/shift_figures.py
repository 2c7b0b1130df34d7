"""Figures of a domain-shift analysis: PCA and t-SNE of cases, intensity histograms per site,
MMD bars; ``draw_shift_figures`` draws all four for ``glioseg shift`` and the demo.

Every figure is written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from glioseg.analysis.features import stack
from glioseg.analysis.shift_run import ShiftAnalysis
from glioseg.report.savefig import save_figure

SITE_COLOURS = {"source": "#1f77b4", "target": "#d62728"}


def _standardised(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pooled = np.concatenate([x, y]).astype(np.float64)
    std = pooled.std(axis=0)
    std[std < 1e-12] = 1.0
    return (pooled - pooled.mean(axis=0)) / std


def tsne_perplexity(n: int) -> float:
    """Perplexity for ``n`` samples: 30 at most, about n / 4, always below ``n``."""
    return float(max(1.0, min(30.0, (n - 1) / 4.0)))


def embed(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2D embedding of ``z`` ``(n, d)`` (already standardised) by ``pca`` or ``tsne``."""
    if method == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(2, z.shape[0], z.shape[1])
        out = PCA(n_components=n_comp, random_state=seed).fit_transform(z)
        return np.pad(out, ((0, 0), (0, 2 - n_comp)))
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, perplexity=tsne_perplexity(z.shape[0]), init="pca",
                    random_state=seed).fit_transform(z)
    raise ValueError(f"unknown embedding {method!r}; use pca or tsne")


def plot_embeddings(
    views: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    method: str = "pca",
    seed: int = 0,
    source_name: str = "source",
    target_name: str = "target",
) -> Path:
    """Scatter of source vs target cases in 2D, one panel per feature view.

    Args:
        views: view title -> (source ``(m, d)``, target ``(n, d)``) features.
        path: PNG to write.
        method: ``pca`` or ``tsne``; features are standardised over the pooled sample first.
        seed: seed of PCA's / t-SNE's randomness.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(views), figsize=(4.6 * len(views), 4.2), squeeze=False)
    for ax, (title, (x, y)) in zip(axes[0], views.items(), strict=True):
        xy = embed(_standardised(x, y), method, seed)
        m = len(x)
        ax.scatter(xy[:m, 0], xy[:m, 1], c=SITE_COLOURS["source"], label=f"{source_name} ({m})",
                   s=42, alpha=0.85, edgecolors="white", linewidths=0.6)
        ax.scatter(xy[m:, 0], xy[m:, 1], c=SITE_COLOURS["target"], marker="^",
                   label=f"{target_name} ({len(y)})", s=48, alpha=0.85, edgecolors="white",
                   linewidths=0.6)
        ax.set_title(title, fontsize=11)
        label = "PC" if method == "pca" else "t-SNE "
        ax.set_xlabel(f"{label}1")
        ax.set_ylabel(f"{label}2")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    n_all = sum(len(a) for a in next(iter(views.values())))
    name = "PCA" if method == "pca" else f"t-SNE (perplexity {tsne_perplexity(n_all):.1f})"
    fig.suptitle(f"{name} of per-case features, standardised over both sites", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def _site_density(
    samples: Sequence[np.ndarray], bins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-case densities ``(n_cases, n_bins)`` and their mean (every case weighs the same)."""
    dens = np.stack([np.histogram(s, bins=bins, density=True)[0] for s in samples])
    return dens, dens.mean(axis=0)


def plot_histograms(
    source: Sequence[np.ndarray],
    target: Sequence[np.ndarray],
    modalities: Sequence[str],
    path: str | Path,
    source_name: str = "source",
    target_name: str = "target",
    n_bins: int = 80,
) -> Path:
    """Brain intensity histograms per sequence, sites overlaid; raw (top) and z-scored (bottom).

    Args:
        source: per source case, ``(4, S)`` raw brain intensities (``modalities`` order).
        target: per target case, the same.
        modalities: sequence names in channel order.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def z(s: np.ndarray) -> np.ndarray:
        std = s.std(axis=1, keepdims=True)
        return (s - s.mean(axis=1, keepdims=True)) / np.where(std < 1e-8, 1.0, std)

    views = {"raw (scanner units)": (list(source), list(target)),
             "z-scored per case (model input)": ([z(s) for s in source], [z(s) for s in target])}
    fig, axes = plt.subplots(2, len(modalities), figsize=(3.6 * len(modalities), 6.4))
    for row, (view, (src, tgt)) in enumerate(views.items()):
        for col, mod in enumerate(modalities):
            ax = axes[row, col]
            allv = np.concatenate([s[col] for s in (*src, *tgt)])
            lo, hi = np.quantile(allv, [0.001, 0.999])
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, n_bins + 1)
            centres = 0.5 * (bins[:-1] + bins[1:])
            for cases, site, name in ((src, "source", source_name), (tgt, "target", target_name)):
                dens, mean = _site_density([s[col] for s in cases], bins)
                for d in dens:
                    ax.plot(centres, d, color=SITE_COLOURS[site], alpha=0.18, lw=0.8)
                ax.plot(centres, mean, color=SITE_COLOURS[site], lw=2.0,
                        label=f"{name} ({len(cases)})")
            ax.set_title(f"{mod.upper()} - {view}", fontsize=10)
            ax.set_yticks([])
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
        axes[row, 0].set_ylabel("density")
    fig.suptitle("Brain intensity histograms (thin: one case, thick: site mean)", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_mmd_bars(results: Mapping[str, Mapping[str, float]], path: str | Path,
                  alpha: float = 0.05) -> Path:
    """Bar chart of MMD^2_u per test (``{name: {"mmd2", "p_value", "null_q95"}}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    vals = [results[n]["mmd2"] for n in names]
    colours = ["#d62728" if results[n]["p_value"] < alpha else "#7f7f7f" for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 3.6))
    ax.bar(names, vals, color=colours)
    ax.scatter(names, [results[n]["null_q95"] for n in names], marker="_", s=500, c="black",
               label="95% of permutations", zorder=3)
    for i, n in enumerate(names):
        top = max(vals[i], results[n]["null_q95"])
        ax.annotate(f"p={results[n]['p_value']:.3g}", (i, top), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("MMD$^2_u$")
    ax.set_title(f"MMD$^2_u$ per test (red: p < {alpha})", fontsize=11)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    return save_figure(fig, path)


def draw_shift_figures(analysis: ShiftAnalysis, out_dir: str | Path) -> list[str]:
    """The four figures of a shift analysis (``analysis.shift_run.analyse_shift``) into
    ``out_dir``: PCA and t-SNE of the cases, intensity histograms, MMD bars; returns their file
    names (``shift.json``'s ``figures``). Seed and alpha are the analysis's own."""
    out_dir = Path(out_dir)
    src, tgt, tests = analysis.source, analysis.target, analysis.doc["tests"]
    seed, alpha = analysis.doc["settings"]["seed"], analysis.doc["settings"]["alpha"]
    views = {"z-scored intensity quantiles": (stack(src, "zscored"), stack(tgt, "zscored")),
             "raw intensity quantiles": (stack(src, "raw"), stack(tgt, "raw"))}
    if "encoder" in tests:
        views["encoder features"] = (stack(src, "encoder"), stack(tgt, "encoder"))
    plot_embeddings(views, out_dir / "shift_pca.png", "pca", seed)
    plot_embeddings(views, out_dir / "shift_tsne.png", "tsne", seed)
    plot_histograms([f.sample for f in src], [f.sample for f in tgt], analysis.sequences,
                    out_dir / "shift_histograms.png")
    bars = {f"z {k}": v for k, v in tests["zscored"].items()}
    bars["raw overall"] = tests["raw"]["overall"]
    if "encoder" in tests:
        bars["encoder"] = tests["encoder"]["overall"]
    plot_mmd_bars(bars, out_dir / "shift_mmd.png", alpha)
    return ["shift_pca.png", "shift_tsne.png", "shift_histograms.png", "shift_mmd.png"]

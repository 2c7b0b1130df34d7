"""Two-sample statistics for domain shift: MMD with an RBF kernel, permutation test, verdict.

Pure functions of arrays and scalars; no I/O. A *sample* is an ``(n, d)`` float array, one row
per case (features of that case). Conventions:

- RBF kernel ``k(x, y) = exp(-||x - y||^2 / (2 * bandwidth^2))``.
- Median heuristic: ``bandwidth`` = median Euclidean distance over all distinct pairs
  ``i < j`` of the pooled sample (Gretton et al., 2012, JMLR 13:723).
- ``MMD^2_u`` is the unbiased estimator (Gretton et al. 2012, eq. 3): within-sample sums skip
  the diagonal, so it is ~0 (and may be slightly negative) when both samples come from one
  distribution.
- Permutation test: pooled rows are re-split at random (explicit generator);
  ``p = (1 + #{permuted MMD^2_u >= observed}) / (1 + n_permutations)``, never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from glioseg.errors import GliosegError

ALPHA = 0.05
"""Significance level of the shift verdict."""

MODERATE_MMD2 = 0.1
"""MMD^2_u (standardised features, median bandwidth) from which a significant shift is called
moderate rather than small. With the median heuristic MMD^2_u stays below ~0.8 even for two
samples with no overlap at all; these cut-offs are rules of thumb, reported with the numbers."""

LARGE_MMD2 = 0.4
"""MMD^2_u from which a shift is called large (the two samples barely overlap)."""


class ShiftError(GliosegError, ValueError):
    """Samples that cannot be compared (too few cases, mismatched features)."""


def _as_sample(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShiftError(f"{name}: expected an (n, d) array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ShiftError(f"{name}: need at least 2 cases, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ShiftError(f"{name}: features contain NaN or inf")
    return arr


def standardise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale every feature by the mean and std of the pooled sample.

    Args:
        x: ``(m, d)`` source sample. y: ``(n, d)`` target sample.

    Returns:
        Both samples in pooled-standard-deviation units; a feature constant over the pooled
        sample becomes 0.
    """
    x = _as_sample(x, "source")
    y = _as_sample(y, "target")
    if x.shape[1] != y.shape[1]:
        raise ShiftError(f"source has {x.shape[1]} features, target {y.shape[1]}")
    pooled = np.concatenate([x, y])
    mean = pooled.mean(axis=0)
    std = pooled.std(axis=0)
    std[std < 1e-12] = 1.0
    return (x - mean) / std, (y - mean) / std


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(m, n)`` squared Euclidean distances between rows of ``a`` ``(m, d)`` and ``b`` ``(n, d)``."""
    from scipy.spatial.distance import cdist

    return cdist(np.asarray(a, np.float64), np.asarray(b, np.float64), metric="sqeuclidean")


def median_bandwidth(z: np.ndarray) -> float:
    """Median heuristic: median Euclidean distance over distinct pairs of rows of ``z`` ``(n, d)``.

    Returns 1.0 when every row is identical (no scale to take; the kernel is then constant).
    """
    from scipy.spatial.distance import pdist

    z = _as_sample(z, "pooled sample")
    med = float(np.median(pdist(z, metric="euclidean")))
    return med if med > 1e-12 else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``(m, n)`` RBF kernel matrix ``exp(-||a_i - b_j||^2 / (2 bandwidth^2))``."""
    if not bandwidth > 0:
        raise ShiftError(f"bandwidth must be > 0, got {bandwidth}")
    return np.exp(-squared_distances(a, b) / (2.0 * bandwidth**2))


def _mmd2_from_kernel(k: np.ndarray, idx_x: np.ndarray, idx_y: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for one or many splits of a pooled kernel matrix.

    Args:
        k: ``(N, N)`` kernel matrix of the pooled sample.
        idx_x: ``(P, m)`` row indices of the first sample per split. idx_y: ``(P, n)``.

    Returns:
        ``(P,)`` MMD^2_u per split.
    """
    m, n = idx_x.shape[1], idx_y.shape[1]
    kxx = k[idx_x[:, :, None], idx_x[:, None, :]]
    kyy = k[idx_y[:, :, None], idx_y[:, None, :]]
    kxy = k[idx_x[:, :, None], idx_y[:, None, :]]
    diag_x = np.trace(kxx, axis1=1, axis2=2)
    diag_y = np.trace(kyy, axis1=1, axis2=2)
    term_x = (kxx.sum(axis=(1, 2)) - diag_x) / (m * (m - 1))
    term_y = (kyy.sum(axis=(1, 2)) - diag_y) / (n * (n - 1))
    return term_x + term_y - 2.0 * kxy.sum(axis=(1, 2)) / (m * n)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2 between samples ``x`` ``(m, d)`` and ``y`` ``(n, d)``, RBF kernel."""
    x = _as_sample(x, "source")
    y = _as_sample(y, "target")
    k = rbf_kernel(np.concatenate([x, y]), np.concatenate([x, y]), bandwidth)
    m = x.shape[0]
    idx = np.arange(k.shape[0])
    return float(_mmd2_from_kernel(k, idx[None, :m], idx[None, m:])[0])


@dataclass(frozen=True)
class MMDResult:
    """Outcome of one MMD permutation test.

    Attributes:
        mmd2: observed unbiased MMD^2.
        p_value: permutation p-value ``(1 + #{perm >= obs}) / (1 + n_permutations)``.
        bandwidth: RBF bandwidth used (median heuristic on the pooled, standardised sample).
        n_permutations: permutations drawn.
        n_source: source cases. n_target: target cases. n_features: feature dimension.
        null_mean: mean MMD^2_u over permutations. null_q95: its 95th percentile.
    """

    mmd2: float
    p_value: float
    bandwidth: float
    n_permutations: int
    n_source: int
    n_target: int
    n_features: int
    null_mean: float
    null_q95: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked_samples(
    x: np.ndarray, y: np.ndarray, standardise_features: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both samples as ``(n, d)`` arrays, standardised on the pooled sample when asked."""
    if standardise_features:
        return standardise(x, y)
    x, y = _as_sample(x, "source"), _as_sample(y, "target")
    if x.shape[1] != y.shape[1]:
        raise ShiftError(f"source has {x.shape[1]} features, target {y.shape[1]}")
    return x, y


def _permutation_null(
    k: np.ndarray, m: int, rng: np.random.Generator, n_permutations: int, batch: int
) -> np.ndarray:
    """``(n_permutations,)`` MMD^2_u of random re-splits (first ``m`` rows vs the rest) of ``k``."""
    total = k.shape[0]
    null = np.empty(n_permutations)
    batch = max(1, min(batch, int(2e7 // total**2)))  # bound memory to ~ 3 x 160 MB
    for start in range(0, n_permutations, batch):
        count = min(batch, n_permutations - start)
        perms = np.stack([rng.permutation(total) for _ in range(count)])
        null[start:start + count] = _mmd2_from_kernel(k, perms[:, :m], perms[:, m:])
    return null


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    n_permutations: int = 1000,
    standardise_features: bool = True,
    batch: int = 256,
) -> MMDResult:
    """MMD^2_u with a median-heuristic RBF kernel and a permutation p-value.

    Args:
        x: ``(m, d)`` source sample, one row per case. y: ``(n, d)`` target sample.
        rng: generator drawing the permutations.
        n_permutations: number of random re-splits of the pooled sample (>= 1).
        standardise_features: scale every feature by the pooled mean/std first.
        batch: permutations evaluated together (memory ~ batch * N^2 floats).

    Raises:
        ShiftError: fewer than 2 cases in a sample, mismatched feature counts, NaN features.
    """
    if n_permutations < 1:
        raise ShiftError(f"n_permutations must be >= 1, got {n_permutations}")
    x, y = _checked_samples(x, y, standardise_features)
    pooled = np.concatenate([x, y])
    m, total = x.shape[0], pooled.shape[0]
    bandwidth = median_bandwidth(pooled)
    k = rbf_kernel(pooled, pooled, bandwidth)
    idx = np.arange(total)
    observed = float(_mmd2_from_kernel(k, idx[None, :m], idx[None, m:])[0])
    null = _permutation_null(k, m, rng, n_permutations, batch)
    # A small tolerance so that a permutation equal to the observed split counts as ">=".
    n_ge = int(np.count_nonzero(null >= observed - 1e-12))
    return MMDResult(
        mmd2=observed,
        p_value=(1 + n_ge) / (1 + n_permutations),
        bandwidth=bandwidth,
        n_permutations=n_permutations,
        n_source=m,
        n_target=total - m,
        n_features=x.shape[1],
        null_mean=float(null.mean()),
        null_q95=float(np.quantile(null, 0.95)),
    )


def feature_shifts(x: np.ndarray, y: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Per-feature mean difference (target - source) in pooled-std units, largest first.

    Args:
        x: ``(m, d)`` source. y: ``(n, d)`` target. names: ``d`` feature names.

    Returns:
        ``[{"feature", "source_mean", "target_mean", "shift_sd"}, ...]`` sorted by ``|shift_sd|``.
    """
    x = _as_sample(x, "source")
    y = _as_sample(y, "target")
    if len(names) != x.shape[1]:
        raise ShiftError(f"{len(names)} names for {x.shape[1]} features")
    pooled_std = np.concatenate([x, y]).std(axis=0)
    pooled_std[pooled_std < 1e-12] = 1.0
    diff = (y.mean(axis=0) - x.mean(axis=0)) / pooled_std
    rows = [
        {"feature": n, "source_mean": float(a), "target_mean": float(b), "shift_sd": float(d)}
        for n, a, b, d in zip(names, x.mean(axis=0), y.mean(axis=0), diff, strict=True)
    ]
    return sorted(rows, key=lambda r: -abs(r["shift_sd"]))


def shift_size(result: MMDResult, alpha: float = ALPHA) -> str:
    """``none`` (not significant at ``alpha``), ``small``, ``moderate`` or ``large``."""
    if result.p_value >= alpha:
        return "none"
    if result.mmd2 >= LARGE_MMD2:
        return "large"
    if result.mmd2 >= MODERATE_MMD2:
        return "moderate"
    return "small"


def _p_text(p: float, n_permutations: int) -> str:
    """``p < 0.001`` below 0.001, else ``p = 0.012``; ``n_permutations`` sets the smallest p."""
    del n_permutations  # p >= 1 / (1 + n_permutations) by construction
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _no_shift_line(
    stats: str, n_text: str, top_seq: str, top_res: MMDResult, overall: MMDResult
) -> tuple[str, list[str]]:
    """Verdict line and advice when the overall test finds no significant shift."""
    line = (f"no significant shift in normalised intensities ({stats}; {n_text}); "
            f"largest per-sequence MMD^2 in {top_seq.upper()} ({top_res.mmd2:.3f}, "
            f"{_p_text(top_res.p_value, top_res.n_permutations)})")
    advice = ["Use the model as is, and evaluate it on a few labelled target cases "
              "before relying on it."]
    if overall.n_source + overall.n_target < 20:
        advice.append("With this few cases only large shifts are detectable: absence of "
                      "evidence is not evidence of no shift.")
    return line, advice


def _shift_line(
    size: str, stats: str, n_text: str, significant: dict[str, MMDResult],
    top_features: list[dict[str, Any]],
) -> str:
    """Verdict line for a significant shift: size, largest shifted sequence, top feature."""
    line = f"target differs from source ({size} shift): {stats} ({n_text})"
    if significant:
        seq, res = max(significant.items(), key=lambda kv: kv[1].mmd2)
        line += (f"; largest shift in {seq.upper()} (MMD^2 = {res.mmd2:.3f}, "
                 f"{_p_text(res.p_value, res.n_permutations)})")
    if top_features:
        f = top_features[0]
        line += f"; top feature {f['feature']} moves {f['shift_sd']:+.2f} pooled SD"
    return line


def _shift_advice(size: str, significant: dict[str, MMDResult], seq_alpha: float) -> list[str]:
    """Advice for a significant shift: fine-tuning by size, protocol checks per large sequence."""
    if size in ("small", "moderate"):
        advice = ["Evaluate on a few labelled target cases; if accuracy drops, fine-tune: "
                  "with ~5-20 labelled cases start with the encoder frozen (decoder only), "
                  "with more, fine-tune the whole network at a low learning rate."]
    else:
        advice = ["Expect a clear accuracy drop: fine-tune on labelled target cases "
                  "(encoder frozen first when labelled cases are few, full fine-tuning "
                  "when more are available) and evaluate before use."]
    large = sorted(((seq, res) for seq, res in significant.items()
                    if shift_size(res, seq_alpha) == "large"), key=lambda kv: -kv[1].mmd2)
    for i, (seq, res) in enumerate(large):
        if i == 0:  # only the largest shift "differs most"
            advice.append(
                f"{seq.upper()} differs most (MMD^2 = {res.mmd2:.3f}): check its acquisition "
                "protocol (field strength, slice thickness, sequence parameters) and "
                "preprocessing (skull stripping, registration); use intensity augmentation "
                "when fine-tuning.")
        else:
            advice.append(f"{seq.upper()} also shifts a lot (MMD^2 = {res.mmd2:.3f}): check "
                          "its protocol and preprocessing too.")
    return advice


def _raw_and_encoder_notes(
    size: str, raw_overall: MMDResult | None, encoder: MMDResult | None, alpha: float
) -> tuple[str, list[str]]:
    """Suffix for the verdict line and extra advice from the raw-intensity and encoder tests."""
    suffix, advice = "", []
    if raw_overall is not None and raw_overall.p_value < alpha and size == "none":
        advice.append(f"Raw scanner intensities differ (MMD^2 = {raw_overall.mmd2:.3f}, "
                      f"{_p_text(raw_overall.p_value, raw_overall.n_permutations)}), but "
                      "per-case z-scoring removes that difference before the model sees it.")
    if encoder is not None:
        enc = (f"encoder features: MMD^2 = {encoder.mmd2:.3f}, "
               f"{_p_text(encoder.p_value, encoder.n_permutations)}")
        suffix = f"; {enc}"
        if encoder.p_value < alpha and size == "none":
            advice.append("The model's encoder separates the sites although the intensity "
                          "statistics do not: evaluate on labelled target cases first.")
    return suffix, advice


def verdict(
    overall: MMDResult,
    per_sequence: dict[str, MMDResult],
    top_features: list[dict[str, Any]],
    raw_overall: MMDResult | None = None,
    encoder: MMDResult | None = None,
    alpha: float = ALPHA,
) -> tuple[str, list[str]]:
    """One verdict line with the numbers, and the advice it implies.

    Args:
        overall: test on all sequences' normalised (z-scored) intensity features.
        per_sequence: test per sequence (same features, one sequence at a time); a sequence
            counts as shifted at the Bonferroni level ``alpha / len(per_sequence)``.
        top_features: ``feature_shifts`` of the normalised features (largest first).
        raw_overall: test on raw (scanner-unit) intensity features, if computed.
        encoder: test on the model's pooled encoder features, if a model was given.
        alpha: significance level.

    Returns:
        ``(verdict, advice)``: a sentence and a list of short recommendations.
    """
    size = shift_size(overall, alpha)
    n_text = f"{overall.n_source} source vs {overall.n_target} target cases"
    stats = f"MMD^2 = {overall.mmd2:.3f}, {_p_text(overall.p_value, overall.n_permutations)}"
    # Four per-sequence tests: Bonferroni keeps the chance of a false "largest shift" <= alpha.
    seq_alpha = alpha / max(1, len(per_sequence))
    significant = {s: r for s, r in per_sequence.items() if r.p_value < seq_alpha}
    ranked = sorted(per_sequence.items(), key=lambda kv: -kv[1].mmd2)
    top_seq, top_res = ranked[0]
    if size == "none":
        line, advice = _no_shift_line(stats, n_text, top_seq, top_res, overall)
    else:
        line = _shift_line(size, stats, n_text, significant, top_features)
        advice = _shift_advice(size, significant, seq_alpha)
    suffix, extra = _raw_and_encoder_notes(size, raw_overall, encoder, alpha)
    return line + suffix, advice + extra

"""``glioseg shift``: compare a target cohort with the source cohort a model learnt from.

Reads both cohorts (any layout), computes per-case features (``features``) and runs the MMD
permutation tests (``shift``): ``analyse_shift`` returns the ``shift.json`` document and the
features; the caller draws the figures from them (``report.shift_figures.draw_shift_figures``)
and ``write_shift`` writes ``OUT/shift.json`` with every number, the verdict, the advice and
the names of the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glioseg import io_atomic
from glioseg.analysis import shift as S
from glioseg.analysis.features import (
    QUANTILES,
    CaseFeatures,
    cohort_features,
    feature_names,
    stack,
)
from glioseg.data.labels import MODALITIES

FORMAT = "glioseg-shift/1"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file, then rename)."""
    return io_atomic.write_json(path, obj, indent=2)


def _per_sequence(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                  n_permutations: int, sequences: Sequence[str] = MODALITIES
                  ) -> dict[str, S.MMDResult]:
    """One test per sequence on that sequence's ``Q`` columns of ``(n, K Q)`` features."""
    q = len(QUANTILES)
    return {m: S.mmd_test(x[:, i * q:(i + 1) * q], y[:, i * q:(i + 1) * q], rng, n_permutations)
            for i, m in enumerate(sequences)}


def _case_table(feats: list[CaseFeatures], sequences: Sequence[str] = MODALITIES
                ) -> list[dict[str, Any]]:
    return [{"case_id": f.case_id, "brain_voxels": f.n_brain,
             "mean": dict(zip(sequences, map(float, f.mean), strict=True)),
             "std": dict(zip(sequences, map(float, f.std), strict=True))} for f in feats]


def analyse_features(
    src: list[CaseFeatures],
    tgt: list[CaseFeatures],
    rng: np.random.Generator,
    n_permutations: int = 1000,
    alpha: float = S.ALPHA,
    sequences: Sequence[str] = MODALITIES,
) -> dict[str, Any]:
    """All tests, feature shifts, verdict and advice for two lists of case features
    (``sequences``: the sequences of their rows, ``MODALITIES`` order).

    Returns:
        JSON-able dict: ``tests`` (``zscored``/``raw``: ``overall`` and per sequence;
        ``encoder`` when present), ``feature_shifts`` (largest 12), ``verdict``, ``advice``.
    """
    if len(src) < 2 or len(tgt) < 2:
        raise S.ShiftError(f"need at least 2 cases per cohort, got {len(src)} source and "
                           f"{len(tgt)} target")
    tests: dict[str, Any] = {}
    results: dict[str, dict[str, S.MMDResult]] = {}
    for view in ("zscored", "raw"):
        x, y = stack(src, view), stack(tgt, view)
        res = {"overall": S.mmd_test(x, y, rng, n_permutations)}
        res.update(_per_sequence(x, y, rng, n_permutations, sequences))
        results[view] = res
        tests[view] = {k: r.to_dict() for k, r in res.items()}
    encoder = None
    if src[0].encoder is not None and tgt[0].encoder is not None:
        encoder = S.mmd_test(stack(src, "encoder"), stack(tgt, "encoder"), rng, n_permutations)
        tests["encoder"] = {"overall": encoder.to_dict()}
    names = feature_names("zscored", sequences)
    shifts = S.feature_shifts(stack(src, "zscored"), stack(tgt, "zscored"), names)
    z = results["zscored"]
    line, advice = S.verdict(z["overall"], {m: z[m] for m in sequences}, shifts,
                             raw_overall=results["raw"]["overall"], encoder=encoder, alpha=alpha)
    return {"tests": tests, "feature_shifts": shifts[:12], "verdict": line, "advice": advice}


def _test_settings(alpha: float, n_permutations: int,
                   sequences: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """The fixed settings of the MMD tests, as ``shift.json`` records them."""
    return {"sequences": list(sequences), "per_sequence_alpha": alpha / len(sequences),
            "n_permutations": n_permutations, "quantiles": list(QUANTILES),
            "kernel": "rbf exp(-d^2 / (2 h^2)), h = median pairwise distance (pooled)",
            "estimator": "unbiased MMD^2_u, features standardised over the pooled sample",
            "moderate_mmd2": S.MODERATE_MMD2, "large_mmd2": S.LARGE_MMD2}


@dataclass(frozen=True)
class ShiftAnalysis:
    """What ``analyse_shift`` computed: the ``shift.json`` document (without ``figures``), the
    per-case features of both cohorts (what the figures show) and the sequences of their rows
    (``MODALITIES`` order)."""

    doc: dict[str, Any]
    source: list[CaseFeatures]
    target: list[CaseFeatures]
    sequences: tuple[str, ...] = MODALITIES


def analyse_shift(
    source_dir: str | Path,
    target_dir: str | Path,
    model: Any | None = None,
    spacing: float | list[float] | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
    alpha: float = S.ALPHA,
    n_sample: int = 20_000,
    patch_size: int = 64,
    n_patches: int = 4,
    model_path: str | None = None,
    modalities: list[str] | None = None,
    sequences: str | Sequence[str] | None = None,
) -> ShiftAnalysis:
    """Domain-shift analysis of ``target_dir`` against ``source_dir``; writes nothing.

    Args:
        source_dir: cohort the model learnt from. target_dir: the new site's cohort.
        model: optional module with ``forward_features`` (adds the encoder-feature test).
        spacing: spacing (mm) the model expects; cases are resampled to it before the encoder.
        n_permutations: permutations per test. seed: seed of every random choice.
        alpha: significance level. n_sample: voxels kept per case for histograms.
        patch_size, n_patches: brain patches fed to the encoder per case.
        model_path: recorded in ``shift.json``.
        modalities: the model's input sequences in its order (its card's); None: all four.
        sequences: the sequences whose intensities are compared (a site with fewer
            sequences); a case needs only those (and the model's). None: all four.

    Returns:
        The ``shift.json`` content but its ``figures``, and both cohorts' features.

    Raises:
        ShiftError: listing every bad case of both cohorts (source or target, case, problem).
    """
    from glioseg.data.cases import selected_modalities

    chosen = selected_modalities(sequences)
    rng_src, rng_tgt, rng_test = (np.random.default_rng(s)
                                  for s in np.random.SeedSequence(seed).spawn(3))
    kw = dict(model=model, spacing=spacing, n_sample=n_sample, patch_size=patch_size,
              n_patches=n_patches, modalities=modalities, sequences=chosen)
    problems: dict[str, list[str]] = {"source": [], "target": []}
    src = cohort_features(source_dir, rng_src, desc="source",  # type: ignore[arg-type]
                          problems=problems["source"], **kw)
    tgt = cohort_features(target_dir, rng_tgt, desc="target",  # type: ignore[arg-type]
                          problems=problems["target"], **kw)
    _raise_bad_cases(problems, sequences is None)
    result = analyse_features(src, tgt, rng_test, n_permutations, alpha, chosen)
    doc = {
        "format": FORMAT,
        "verdict": result["verdict"],
        "advice": result["advice"],
        "source": {"dir": str(source_dir), "n_cases": len(src),
                   "cases": [f.case_id for f in src]},
        "target": {"dir": str(target_dir), "n_cases": len(tgt),
                   "cases": [f.case_id for f in tgt]},
        "settings": {
            "model": model_path, "spacing": spacing, "seed": seed, "alpha": alpha,
            **_test_settings(alpha, n_permutations, chosen),
            "patch_size": patch_size if model is not None else None,
            "n_patches": n_patches if model is not None else None,
        },
        "tests": result["tests"],
        "feature_shifts": result["feature_shifts"],
        "cases": {"source": _case_table(src, chosen), "target": _case_table(tgt, chosen)},
    }
    return ShiftAnalysis(doc, src, tgt, chosen)


def _raise_bad_cases(problems: dict[str, list[str]], all_sequences: bool) -> None:
    """Raise ``ShiftError`` listing every bad case of each cohort, if there is one."""
    lines = [f"  {cohort}: {msg}" for cohort, msgs in problems.items() for msg in msgs]
    if not lines:
        return
    counts = ", ".join(f"{len(msgs)} in the {cohort}" for cohort, msgs in problems.items()
                       if msgs)
    hint = ""
    if all_sequences and any("missing modality" in line for line in lines):
        hint = ("\nto compare the sequences both sites have, name them, e.g. "
                "--modalities t2,flair")
    raise S.ShiftError(f"{len(lines)} bad cases ({counts}); fix or remove them:\n"
                       + "\n".join(lines) + hint)


def write_shift(out_dir: str | Path, analysis: ShiftAnalysis, figures: Sequence[str]
                ) -> dict[str, Any]:
    """Write ``out_dir/shift.json``: ``analysis.doc`` with the names of the figures drawn
    beside it; returns that document."""
    doc = {**analysis.doc, "figures": list(figures)}
    write_json(Path(out_dir) / "shift.json", doc)
    return doc

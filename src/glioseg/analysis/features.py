"""Per-case features for domain-shift analysis: brain intensity statistics and encoder features.

Two views of the intensities of every sequence inside the brain (brain = voxels non-zero in any
sequence, as in preprocessing):

- ``raw``: quantiles of the stored intensities (scanner units). These move with the scanner
  gain, which per-case z-scoring removes before the model sees the image, so a difference
  here alone does not mean the model sees different inputs.
- ``zscored``: quantiles after z-scoring the case's brain voxels per sequence, exactly the
  normalisation of preprocessing. They keep what z-scoring does not remove: tissue contrast,
  skew, noise, bias field, lesion load. This is the view the shift verdict is based on.

A site with fewer sequences is analysed on the ones both cohorts have (``sequences``): the
features then hold one row per sequence analysed, in ``MODALITIES`` order.

With a model, ``encoder_features`` adds the mean-pooled outputs of every encoder stage
(``model.forward_features``) over brain patches of the preprocessed case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.data.labels import MODALITIES
from glioseg.errors import GliosegError

QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
"""Quantiles of the brain intensities used as features, per sequence."""

HIST_SAMPLE = 20_000
"""Brain voxels kept per case and sequence for the intensity histograms."""


@dataclass
class CaseFeatures:
    """Features of one case.

    Attributes:
        case_id: case id.
        raw: ``(K, Q)`` float64 quantiles ``QUANTILES`` of raw brain intensities per sequence
            analysed (all four, or those chosen; ``MODALITIES`` order).
        zscored: ``(K, Q)`` float64 the same quantiles after per-case z-scoring.
        mean: ``(K,)`` brain mean per sequence. std: ``(K,)`` brain std per sequence.
        sample: ``(K, S)`` float32 raw intensities of ``S`` random brain voxels (same voxels
            for every sequence), for histograms.
        n_brain: brain voxels.
        encoder: ``(D,)`` float64 pooled encoder features, or None without a model.
    """

    case_id: str
    raw: np.ndarray
    zscored: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    sample: np.ndarray
    n_brain: int
    encoder: np.ndarray | None = None


class FeatureError(GliosegError, ValueError):
    """A case whose features cannot be computed (empty brain, wrong shape)."""


def feature_names(view: str, modalities: Sequence[str] = MODALITIES) -> list[str]:
    """Names of the flattened ``(K, Q)`` features, e.g. ``flair_zscored_q95``."""
    return [f"{m}_{view}_q{round(q * 100):02d}" for m in modalities for q in QUANTILES]


def intensity_features(
    case_id: str, image: np.ndarray, rng: np.random.Generator, n_sample: int = HIST_SAMPLE
) -> CaseFeatures:
    """Brain intensity features of one case.

    Args:
        case_id: case id (for messages).
        image: ``(K, X, Y, Z)`` float, one channel per sequence analysed (``MODALITIES``
            order), 0 outside the brain.
        rng: generator choosing the voxels kept for histograms.
        n_sample: voxels kept (all brain voxels when the brain is smaller).

    Raises:
        FeatureError: for a non-4D image or an image with no non-zero voxel.
    """
    if image.ndim != 4 or not 1 <= image.shape[0] <= len(MODALITIES):
        raise FeatureError(f"{case_id}: expected a (K, X, Y, Z) image of K <= "
                           f"{len(MODALITIES)} sequences, got {image.shape}")
    mask = np.any(image != 0, axis=0)
    n_brain = int(mask.sum())
    if n_brain < 2:
        raise FeatureError(f"{case_id}: image has no brain (fewer than 2 non-zero voxels)")
    values = image[:, mask].astype(np.float64)  # (4, n_brain)
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std_safe = np.where(std < 1e-8, 1.0, std)
    raw_q = np.quantile(values, QUANTILES, axis=1).T
    z_q = (raw_q - mean[:, None]) / std_safe[:, None]  # quantiles commute with affine maps
    keep = rng.choice(n_brain, size=min(n_sample, n_brain), replace=False)
    return CaseFeatures(case_id, raw_q, z_q, mean, std, values[:, np.sort(keep)].astype(np.float32),
                        n_brain)


def _patch_shape(shape: Sequence[int], patch_size: int,
                 divisors: Sequence[int]) -> tuple[int, ...]:
    """Per axis: the largest multiple of its divisor not above ``patch_size`` nor the shape
    (at least one divisor; smaller images are zero-padded)."""
    out = []
    for s, d in zip(shape, divisors, strict=True):
        size = min(patch_size, max(s, d))
        out.append(max(d, size // d * d))
    return tuple(out)


def model_divisors(model: Any) -> tuple[int, int, int]:
    """Per-axis input divisors of a model: ``model.divisors``, else ``model.divisor``, else 1."""
    divs = getattr(model, "divisors", None)
    if divs is not None:
        return tuple(int(d) for d in divs)  # type: ignore[return-value]
    d = int(getattr(model, "divisor", 1))
    return (d, d, d)


def encoder_features(
    model: Any,
    image: np.ndarray,
    rng: np.random.Generator,
    patch_size: int = 64,
    n_patches: int = 4,
) -> np.ndarray:
    """Mean-pooled encoder features of brain patches of one preprocessed case.

    Args:
        model: a ``torch.nn.Module`` with ``forward_features(x) -> list[Tensor]`` taking
            ``(B, 4, x, y, z)`` with spatial sizes divisible by ``model.divisors`` (per axis)
            or ``model.divisor`` (default 1).
        image: ``(4, X, Y, Z)`` float32 preprocessed (z-scored, 0 outside the brain).
        rng: generator choosing patch centres among brain voxels.
        patch_size: patch edge (voxels), rounded down to a multiple of the divisor per axis.
        n_patches: patches per case; their features are averaged.

    Returns:
        ``(D,)`` float64: every encoder stage output averaged over space and patches, stages
        concatenated (D = sum of stage channels).
    """
    import torch

    pshape = _patch_shape(image.shape[1:], patch_size, model_divisors(model))
    pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(pshape, image.shape[1:], strict=True)]
    img = np.pad(image, pad) if any(p[1] for p in pad) else image
    brain = np.argwhere(np.any(img != 0, axis=0))
    if len(brain) == 0:
        raise FeatureError("preprocessed image has no brain voxel")
    centres = brain[rng.choice(len(brain), size=n_patches, replace=len(brain) < n_patches)]
    patches = []
    for c in centres:
        lo = [int(np.clip(ci - p // 2, 0, s - p)) for ci, p, s in zip(c, pshape, img.shape[1:],
                                                                       strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, pshape, strict=True))
        patches.append(img[(slice(None), *sl)])
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(patches), dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stages = model.forward_features(batch)
    finally:
        model.train(was_training)
    pooled = [s.float().mean(dim=tuple(range(2, s.ndim))) for s in stages]  # (B, C_l) each
    return torch.cat(pooled, dim=1).mean(dim=0).double().numpy()


def cohort_features(
    data_dir: str | Path,
    rng: np.random.Generator,
    model: Any | None = None,
    spacing: float | Sequence[float] | None = None,
    n_sample: int = HIST_SAMPLE,
    patch_size: int = 64,
    n_patches: int = 4,
    desc: str = "cases",
    modalities: Sequence[str] | None = None,
    sequences: str | Sequence[str] | None = None,
    problems: list[str] | None = None,
) -> list[CaseFeatures]:
    """Features of every case under ``data_dir`` (any layout ``glioseg.data.cases`` knows).

    Args:
        data_dir: cohort folder.
        rng: generator for voxel and patch sampling.
        model: optional module with ``forward_features`` (see ``encoder_features``).
        spacing: spacing (mm) the model was trained at (resampling before the encoder);
            None keeps each case's grid.
        n_sample, patch_size, n_patches: see ``intensity_features`` / ``encoder_features``.
        desc: progress-bar label.
        modalities: the model's input sequences by name, in its order (its card's); None: the
            four in canonical order.
        sequences: the sequences whose intensities are compared (e.g. ``"t2,flair"``); a
            case needs only those (and the model's). None: all four.
        problems: when given, a bad case's message is appended to it and the other cases go
            on (the caller reports them all); else the first bad case raises.

    Raises:
        CaseError / FeatureError: naming the case, for unreadable or empty cases.
    """
    from tqdm import tqdm

    from glioseg.data.cases import discover, load_case, selected_modalities

    chosen = selected_modalities(sequences)
    needed = selected_modalities(list(dict.fromkeys([*chosen, *(modalities or MODALITIES)]))
                                 if model is not None else chosen)
    rows = [MODALITIES.index(m) for m in chosen]
    out = []
    for case in tqdm(discover(data_dir), desc=desc, unit="case"):
        try:
            data = load_case(case, with_labels=False, modalities=needed)
            feats = intensity_features(case.case_id, data.image[rows], rng, n_sample)
            if model is not None:
                from glioseg.preprocess.pure import preprocess_arrays

                pre, _, _ = preprocess_arrays(data.image, None, data.header.spacing, spacing)
                if modalities is not None:  # the channels the encoder was trained on, by name
                    pre = pre[[MODALITIES.index(m) for m in modalities]]
                feats.encoder = encoder_features(model, pre, rng, patch_size, n_patches)
        except ValueError as exc:  # CaseError, FeatureError, PreprocessError
            if problems is None:
                raise
            msg = str(exc)
            problems.append(msg if case.case_id in msg else f"{case.case_id}: {msg}")
            continue
        out.append(feats)
    return out


def stack(features: Sequence[CaseFeatures], view: str) -> np.ndarray:
    """``(n_cases, d)`` matrix of one view: ``raw``, ``zscored`` (d = 4 Q) or ``encoder``."""
    if view == "encoder":
        rows = [f.encoder for f in features]
        if any(r is None for r in rows):
            raise FeatureError("encoder features missing: no model was given")
        return np.stack(rows)  # type: ignore[arg-type]
    return np.stack([getattr(f, view).reshape(-1) for f in features])

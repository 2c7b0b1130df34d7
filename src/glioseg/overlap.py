"""Overlap of two masks of one region: voxel counts and Dice, as pure numpy functions.

The one definition of Dice the project uses: training's validation (``train/loop.py``) and
the evaluation (``evaluate/metrics.py``, which builds the other BraTS metrics on these
counts) both call it. It sits at the base of the package so that training never imports the
evaluation stage.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from glioseg.errors import GliosegError


class EvaluationError(GliosegError, ValueError):
    """A prediction or reference that cannot be scored; the message names the case and file."""


class ConfusionCounts(NamedTuple):
    """Voxel counts of one region: true/false positives/negatives over the whole volume."""

    tp: int
    fp: int
    fn: int
    tn: int


def check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    return pred, ref


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> ConfusionCounts:
    """True/false positive/negative voxel counts of ``pred`` vs ``ref``, ``(X, Y, Z)`` bool."""
    pred, ref = check_pair(pred, ref)
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    return ConfusionCounts(tp, fp, fn, int(pred.size) - tp - fp - fn)


def dice_from_counts(c: ConfusionCounts) -> float:
    """Dice = 2 TP / (2 TP + FP + FN); 1 when both masks are empty."""
    denom = 2 * c.tp + c.fp + c.fn
    return 1.0 if denom == 0 else 2.0 * c.tp / denom


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two ``(X, Y, Z)`` bool masks; both empty -> 1, exactly one empty -> 0."""
    return dice_from_counts(confusion_counts(pred, ref))

"""What a checkpoint's card and network say about prediction: modalities, spacing, orientation,
post-processing thresholds, patch size, divisor, width, and the whole-box memory estimate.

Pure readers of a model card (``glioseg.model.card.ModelCard`` or any object with the same
attributes) and of a network's ``config``; ``CasePredictor`` and the benchmarks use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.errors import GliosegError

ET_MIN_VOXELS_DEFAULT = 0
"""ET rule threshold used when neither the card nor the command line gives one (rule off)."""


class PredictError(GliosegError, ValueError):
    """Input or options the predictor cannot use; the message names the case or the option."""


def _card_section(card: Any, name: str) -> dict[str, Any]:
    value = getattr(card, name, None) if card is not None else None
    return dict(value) if isinstance(value, dict) else {}


def card_modalities(card: Any, in_channels: int) -> tuple[str, ...]:
    """Modalities the network takes, in input order (the card's, else the canonical four)."""
    mods = tuple(getattr(card, "modalities", None) or MODALITIES[:in_channels])
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise PredictError(f"model card names unknown modalities {unknown}; known: {MODALITIES}")
    return mods


def card_spacing(card: Any) -> list[float] | None:
    """Voxel size the model was trained at (None: the original grid)."""
    sp = _card_section(card, "preprocessing").get("spacing")
    if sp is None:
        return None
    return [float(sp)] * 3 if np.isscalar(sp) else [float(s) for s in sp]


def card_orientation(card: Any) -> tuple[str, str, str] | None:
    """Axis codes of the training arrays (e.g. ``('L', 'P', 'S')``); None: not recorded
    (cases are then used as stored, whatever their orientation)."""
    codes = _card_section(card, "preprocessing").get("orientation")
    return tuple(str(c) for c in codes) if codes else None  # type: ignore[return-value]


def card_allows_missing(card: Any) -> bool:
    """Whether the card lets a missing sequence be replaced by zeros (modality dropout).

    Set by ``preprocessing["missing_modality"] = "zeros"`` in the card (a model trained with
    sequence dropout); otherwise a missing sequence is an error.
    """
    pre = _card_section(card, "preprocessing")
    return pre.get("missing_modality") in ("zeros", "zero") or bool(pre.get("allow_missing"))


def card_et_min_voxels(card: Any) -> int | None:
    """The card's ET rule threshold (``et_threshold``, voxels), or None."""
    value = getattr(card, "et_threshold", None)
    if value is not None:
        return int(value)
    for section in ("postprocessing", "preprocessing", "training", "metrics"):
        value = _card_section(card, section).get("et_min_voxels")
        if value is not None:
            return int(value)
    return None


WHOLE_VOLUME_BUDGET_GB = 8.0
"""Largest estimated memory (GiB) of a whole-box forward that ``mode: auto`` runs."""

BYTES_PER_VOXEL_AND_WIDTH = 40
"""Estimated peak bytes of an fp32 whole-volume forward per voxel and per first-stage feature:
measured (peak RSS above the model) 32 for the small preset on an 80x96x80 box and 27 for the
full preset on 160x192x160, rounded up."""

PREDICT_MODES = ("auto", "whole", "sliding")


def card_min_size_mm3(card: Any) -> dict[str, float] | None:
    """The card's per-region size thresholds (``postprocessing.min_size_mm3``), or None."""
    sizes = _card_section(card, "postprocessing").get("min_size_mm3")
    if not isinstance(sizes, dict):
        return None
    return {r: float(sizes.get(r, 0.0)) for r in REGIONS}


def whole_volume_bytes(shape: Sequence[int], width: int) -> int:
    """Estimated peak memory of one forward of a ``shape`` volume through a network whose
    first stage has ``width`` features (``BYTES_PER_VOXEL_AND_WIDTH``)."""
    return int(np.prod([int(s) for s in shape])) * max(int(width), 1) * BYTES_PER_VOXEL_AND_WIDTH


def model_width(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "base_width", 32) or 32)


def model_divisor(model: torch.nn.Module) -> int:
    div = getattr(model, "divisor", 1)
    return int(max(div) if isinstance(div, list | tuple) else div)


def model_roi(model: torch.nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "config", None)
    roi = getattr(cfg, "patch_size", None)
    return tuple(int(r) for r in roi) if roi else (128, 128, 128)  # type: ignore[return-value]


def model_in_channels(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "in_channels"):
        return int(cfg.in_channels)
    for p in model.parameters():
        if p.ndim == 5:
            return int(p.shape[1])
    return len(MODALITIES)


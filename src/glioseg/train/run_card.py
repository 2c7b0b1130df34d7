"""The model card of a training checkpoint (``glioseg.model.card.ModelCard``), built from the
run's config, the cache it learnt from and its last validation scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glioseg.train import config as C


def model_card(cfg: C.Config, model: Any, step: int, metrics: Mapping[str, Any],
               cases: Sequence[Any], val_ids: Sequence[str] | None = None) -> Any:
    """The model card (``glioseg.model.card.ModelCard``) of ``model`` saved at ``step``:
    architecture, the sequences and label scheme it was trained on, the cache's spacing and
    orientation, the config, the validation Dice in ``metrics`` and its provenance (trained,
    fine-tuned from ``transfer.init_from`` or self-supervised). ``val_ids``: the run's validation
    cases, kept as ``training.validation_cases`` (the cases to evaluate it on, never its
    training cases)."""
    from glioseg.data.labels import SCHEMES
    from glioseg.model.card import ModelCard, cache_orientation

    # the scheme the segmentations were read in: declared (preprocess --labels), else the
    # layout's
    layout = (cases[0].meta.get("label_scheme") or cases[0].meta.get("layout")) if cases else None
    dice = {r: metrics[f"dice_{r}"] for r in ("WT", "TC", "ET") if f"dice_{r}" in metrics}
    provenance: dict[str, Any] = {"source": "trained"}
    extra: dict[str, Any] = {}
    if cfg.train.task == "genesis":
        provenance = {"source": "self-supervised", "method": "models-genesis",
                      "note": "restoration head; fine-tune to segment (glioseg finetune)"}
        extra["regions"] = tuple(f"restore_{m}" for m in cfg.data.modalities)
    if cfg.transfer.init_from:
        provenance = {"source": "fine-tuned", "init_from": cfg.transfer.init_from,
                      "strategy": cfg.transfer.strategy}
    return ModelCard.for_model(
        model,
        modalities=tuple(cfg.data.modalities),
        **extra,
        label_scheme=layout if layout in SCHEMES else "brats2023",
        preprocessing={"spacing": cache_spacing(cfg.data.cache_dir),
                       "normalisation": "zscore-brain",
                       "orientation": cache_orientation(cfg.data.cache_dir)},
        training={"steps": step, "data": cfg.data.cache_dir, "seed": cfg.train.seed,
                  **({"validation_cases": list(val_ids)} if val_ids is not None else {}),
                  "config": C.config_to_dict(cfg)},
        metrics={"dice": dice, "step": metrics.get("step", step)} if dice else {},
        provenance=provenance,
    )


def cache_spacing(cache_dir: str) -> Any:
    """The voxel size (mm, 3 floats) the model learns at, for its card: the cache's resampling
    spacing, else the one spacing all its cases share (data already at e.g. 2 mm), so that
    prediction resamples other data to it; None when the cases differ (native grids)."""
    try:
        from glioseg.preprocess.cache import open_cache, read_dataset_json

        spacing = read_dataset_json(Path(cache_dir)).get("spacing")
        if spacing is not None:
            return spacing
        found = {tuple(round(float(v), 3) for v in c.meta["spacing"])
                 for c in open_cache(cache_dir, validate=False)}
    except (ValueError, OSError, KeyError, TypeError):
        return None
    return list(found.pop()) if len(found) == 1 else None


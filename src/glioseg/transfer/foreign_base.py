"""What every importer of a foreign checkpoint shares: safe reading, the imported model, order.

Files are read only with ``torch.load(path, map_location="cpu", weights_only=True)``, which
builds tensors and plain containers but runs no code from the file. NumPy scalars and dtypes
(data, found in nnU-Net's training log) are allowlisted; any other Python object makes the load
fail with :class:`UnsafeCheckpointError`, which says how to convert the file once, where it is
trusted, into a state-dict-only file.

``to_canonical_order`` rearranges an imported model into the project's order -- inputs t1,
t1ce, t2, flair and outputs WT, TC, ET -- by name, when the checkpoint has exactly those
sequences and regions under any names (an exact permutation, no approximation); otherwise the
card keeps the checkpoint's own names and order. The importers themselves are
``glioseg.transfer.monai_import`` and ``glioseg.transfer.nnunet_import``; the one entry point
is ``glioseg.transfer.foreign.import_checkpoint``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.errors import GliosegError
from glioseg.model.card import ModelCard, save_model, save_model_files
from glioseg.model.registry import ModelConfig, build_model
from glioseg.model.state_dict import check_state_dict, strip_wrapper_prefixes
from glioseg.model.weights import canonical_modality, canonical_region, load_adapted


class ForeignCheckpointError(GliosegError, ValueError):
    """A foreign checkpoint whose layout is not the one expected, or not supported."""


class UnsafeCheckpointError(ForeignCheckpointError):
    """A checkpoint that needs arbitrary pickled Python objects to load."""


def _numpy_safe_globals() -> list[Any]:
    import numpy as np
    from numpy._core.multiarray import scalar

    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    for code in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1"):
        allowed.append(type(np.dtype(code)))
    return allowed


def safe_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (NumPy scalars allowed);
    :class:`UnsafeCheckpointError` when the file needs other Python objects."""
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln),
                      str(exc).splitlines()[0] if str(exc) else "")
        raise UnsafeCheckpointError(
            f"{path}: cannot be loaded safely: it holds pickled Python objects beyond tensors "
            f"and plain data ({reason}); loading it fully would run code from the file. If you "
            "trust its origin, convert it once to a weights-only file, e.g.\n"
            "  python -c \"import torch; c = torch.load('IN', map_location='cpu', "
            "weights_only=False); keep = ('network_weights', 'init_args', 'trainer_name', "
            "'state_dict'); c = {k: v for k, v in c.items() if k in keep} if isinstance(c, dict) "
            "else c.state_dict(); c.get('init_args', {}).pop('device', None); "
            "torch.save(c, 'OUT')\"\n"
            "and import OUT instead (for a whole pickled module, save its state_dict())."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ForeignCheckpointError(f"{path}: not a readable PyTorch checkpoint: {exc}") from None


@dataclass
class ImportedModel:
    """A foreign checkpoint in the project's format.

    ``model`` is the loaded network (None for partial weights such as an encoder alone);
    ``state_dict`` the weights in the project's key layout; ``card`` describes them.
    """

    model: torch.nn.Module | None
    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    notes: list[str] = field(default_factory=list)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` + ``card.json`` (partial weights too) into ``directory``."""
        directory = Path(directory)
        if self.model is not None:
            return save_model(directory, self.model, self.card)
        return save_model_files(directory, self.state_dict, self.card, {"format": "pt"})


def state_dict_from(obj: Any, path: Path, keys: Sequence[str] = ("state_dict", "model",
                                                                    "network_weights")
                     ) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint ``obj`` (itself, or under the first of ``keys``),
    wrapper prefixes removed (``module.``, ``_orig_mod.``)."""
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise ForeignCheckpointError(f"{path}: expected a state dict (names -> tensors), "
                                     f"possibly under one of {list(keys)}")
    return strip_wrapper_prefixes(obj)


def provenance_of(path: Path, fmt: str, **more: Any) -> dict[str, Any]:
    """The card's ``provenance`` of weights imported from ``path`` in format ``fmt``."""
    return {"source": "imported", "format": fmt, "file": str(path), **more}


def load_strict(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """The network of ``cfg`` with ``state`` loaded strictly (every tensor named and shaped)."""
    model = build_model(cfg)
    check_state_dict(model, state, where=f"{path} (after mapping)")
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_canonical_order(imported: ImportedModel) -> ImportedModel:
    """Permute inputs to t1, t1ce, t2, flair and outputs to WT, TC, ET when the checkpoint
    has exactly those under any names; else return it as it is (with a note)."""
    card, model = imported.card, imported.model
    mods = tuple(canonical_modality(m) for m in card.modalities)
    regs = tuple(canonical_region(r) for r in card.regions)
    if model is None or sorted(mods) != sorted(MODALITIES) or sorted(regs) != sorted(REGIONS):
        imported.notes.append(f"kept the checkpoint's order: inputs {card.modalities}, "
                              f"outputs {card.regions}")
        return imported
    if mods == MODALITIES and regs == REGIONS:
        imported.card = card.replace(modalities=MODALITIES, regions=REGIONS)
        return imported
    target = build_model(card.config)
    source_card = card.replace(modalities=mods, regions=regs)
    report = load_adapted(target, imported.state_dict, source_card, MODALITIES, REGIONS)
    if report.new or report.unused:
        raise ForeignCheckpointError(f"reordering the imported model failed:\n{report}")
    provenance = {**card.provenance, "source_modalities": list(card.modalities),
                  "source_regions": list(card.regions)}
    new_card = card.replace(modalities=MODALITIES, regions=REGIONS, provenance=provenance)
    imported.notes.append(f"inputs reordered {card.modalities} -> {MODALITIES}; outputs "
                          f"{card.regions} -> {REGIONS}")
    target.eval()
    return ImportedModel(target, dict(target.state_dict()), new_card, imported.notes)


def count_groups(keys: Sequence[str], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over ``keys`` (how many
    stages, blocks or layers a state dict holds)."""
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def check_names(cfg: ModelConfig, modalities: Sequence[str], regions: Sequence[str],
                 path: Path) -> None:
    """Refuse input or output names whose number differs from the network's channels."""
    if len(modalities) != cfg.in_channels:
        raise ForeignCheckpointError(f"{path}: the network takes {cfg.in_channels} input "
                                     f"channels but {len(modalities)} modalities were named "
                                     f"{tuple(modalities)}")
    if len(regions) != cfg.out_channels:
        raise ForeignCheckpointError(f"{path}: the network has {cfg.out_channels} outputs but "
                                     f"{len(regions)} were named {tuple(regions)}")

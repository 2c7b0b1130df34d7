"""Model cards: what a set of weights is, what it expects, how it was made; save and load.

A saved model is a folder with two files, written together as one unit (the folder is built
under a temporary name, flushed to disk, then renamed onto the model folder: ``io_atomic.
atomic_dir``), so no reader ever sees new weights beside an old card:

    model.safetensors   the state dict (no pickle: safe to load from anyone)
    card.json           the :class:`ModelCard` (architecture and config, modalities in input
                        order, label scheme, output regions, preprocessing, training, metrics,
                        provenance)

``load_model`` rebuilds the network from the card through the registry and loads the
weights strictly: a mismatch is an error that lists the missing, unexpected and reshaped
tensors, never a silent partial load. Partial weights (e.g. an imported encoder) carry
``provenance["partial"] = true`` and load only through :func:`glioseg.model.weights.load_adapted`.

``load_model`` reads both files through one handle on the folder (``read_model_files``), so a
folder replaced while it reads gives it one version or the other, never a mix; ``model_digest``
(sha256 of the weights and the card) names what was loaded, which ``predict`` keys its resume on.
Unwrapping, the safetensors files and the strict check of a state dict are
``glioseg.model.state_dict``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glioseg import __version__
from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_dir, write_text
from glioseg.model.registry import ModelConfig, build_model
from glioseg.model.state_dict import (
    WeightsMismatchError,
    check_state_dict,
    not_a_model,
    save_state_dict,
    strip_wrapper_prefixes,
    unwrap_model,
)
from glioseg.model.state_dict import load_state_dict as load_state_dict  # re-exported

CARD_FORMAT = "glioseg-card/1"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"


class CardError(GliosegError, ValueError):
    """A model card that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ModelCard:
    """Description of a set of weights (JSON in ``card.json``).

    Attributes:
        arch: registry name of the network (``model["arch"]`` repeats it).
        model: the :class:`ModelConfig` as a dict.
        modalities: sequence names in input-channel order, e.g. ``("t1", "t1ce", "t2", "flair")``.
        label_scheme: label file convention of the training data; predictions are written in it
            by default (see :mod:`glioseg.data.labels`).
        regions: names of the output channels, in order (``("WT", "TC", "ET")``, sigmoid).
        preprocessing: ``{"spacing": [sx, sy, sz] | None, "normalisation": "zscore-brain",
            "orientation": ["L", "P", "S"] | None, ...}``; ``orientation``: the nibabel axis
            codes of the training arrays (``cache_orientation``), which ``predict`` turns each
            case to (and its result back); absent or None: cases are used as stored.
        training: ``{"steps", "data", "seed", "code_version", ...}``.
        metrics: validation figures, e.g. ``{"dice": {"WT": 0.9, ...}}``.
        et_threshold: post-processing: predicted ET with fewer voxels than this becomes
            necrosis (``None``: no such step).
        postprocessing: chosen post-processing that ``predict`` applies, e.g.
            ``{"min_size_mm3": {"WT": 250, "TC": 150, "ET": 100}, "chosen_on": [...],
            "before": {...}, "after": {...}}`` (``glioseg tune-postprocess``); empty: none.
        provenance: where the weights come from (``{"source": "trained" | "imported", ...}``).
        created: UTC time stamp (ISO 8601).
        format: card format version.
        extra: keys of a newer card format this version does not know (kept, written back).
    """

    arch: str
    model: dict[str, Any]
    modalities: tuple[str, ...] = MODALITIES
    label_scheme: str = "brats2023"
    regions: tuple[str, ...] = REGIONS
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {"spacing": None, "normalisation": "zscore-brain"}
    )
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    et_threshold: int | None = None
    postprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    format: str = CARD_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: torch.nn.Module | ModelConfig, **fields: Any) -> ModelCard:
        """A card for ``model`` (or its config), with ``training.code_version`` filled in."""
        cfg = model if isinstance(model, ModelConfig) else _config_of(model)
        training = {"code_version": __version__, **fields.pop("training", {})}
        return cls(arch=cfg.arch, model=cfg.to_dict(), training=training, **fields)

    @property
    def config(self) -> ModelConfig:
        try:
            return ModelConfig.from_dict(self.model)
        except (TypeError, ValueError) as exc:
            raise CardError(f"model card: bad model config: {exc}") from None

    @property
    def partial(self) -> bool:
        return bool(self.provenance.get("partial", False))

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["modalities"] = list(self.modalities)
        data["regions"] = list(self.regions)
        return {**self.extra, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("arch", "model") if k not in data]
        if missing:
            raise CardError(f"model card lacks {missing}")
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        for key in ("modalities", "regions"):
            if key in known:
                known[key] = tuple(known[key])
        card = cls(**known, extra=extra)
        if card.model.get("arch", card.arch) != card.arch:
            raise CardError(f"model card: arch {card.arch!r} but model config arch "
                            f"{card.model.get('arch')!r}")
        if len(card.modalities) != card.config.in_channels:
            raise CardError(f"model card: {len(card.modalities)} modalities {card.modalities} "
                            f"but the model takes {card.config.in_channels} input channels")
        return card

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"model card is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CardError("model card must be a JSON object")
        return cls.from_dict(data)

    def summary(self) -> str:
        """A few readable lines (what ``glioseg card`` prints)."""
        cfg = self.model
        if self.arch == "segresnet":
            shape = f"init filters {cfg.get('base_width')}, blocks {cfg.get('blocks_down')}"
        elif self.arch == "swinunetr":
            shape = f"feature size {cfg.get('base_width')}, depths {cfg.get('swin_depths')}"
        else:
            shape = (f"base width {cfg.get('base_width')}, stages {cfg.get('n_stages')}, "
                     f"max width {cfg.get('max_width')}")
        lines = [
            f"architecture   {self.arch}  (in {cfg.get('in_channels')}, out "
            f"{cfg.get('out_channels')}, {shape}, patch {cfg.get('patch_size')})",
            f"modalities     {', '.join(self.modalities)}  (input channel order)",
            f"outputs        {', '.join(self.regions)}  (label scheme {self.label_scheme})",
            f"preprocessing  {_inline(self.preprocessing)}",
            f"training       {_inline(self.training) or '-'}",
            f"metrics        {_inline(self.metrics) or '-'}",
            f"et_threshold   {self.et_threshold if self.et_threshold is not None else '-'}",
            f"postprocessing {_inline(self.postprocessing.get('min_size_mm3') or {}) or '-'}",
            f"provenance     {_inline(self.provenance) or '-'}",
            f"created        {self.created}  ({self.format})",
        ]
        return "\n".join(lines)


def card_for_training(
    config: ModelConfig,
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    spacing: Any = None,
    modalities: tuple[str, ...] = MODALITIES,
    label_scheme: str = "brats2023",
    et_threshold: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    orientation: Any = None,
) -> ModelCard:
    """The card of a model trained on the preprocessing cache (z-scored over the brain,
    cropped to the brain box, resampled to ``spacing`` mm or not at all when None; arrays in
    ``orientation``, nibabel axis codes, or unknown when None)."""
    return ModelCard.for_model(
        config,
        modalities=tuple(modalities),
        label_scheme=label_scheme,
        preprocessing={"spacing": list(spacing) if spacing is not None else None,
                       "normalisation": "zscore-brain", "crop": "brain-bbox",
                       "orientation": list(orientation) if orientation is not None else None},
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        et_threshold=et_threshold,
        provenance=dict(provenance or {"source": "trained"}),
    )


def cache_orientation(cache_dir: str | os.PathLike[str]) -> list[str] | None:
    """The orientation of a cache's arrays, for a card: the nibabel axis codes (e.g.
    ``["L", "P", "S"]``) of every cached case's ``original_affine`` (preprocessing keeps the
    voxel axes as stored), when all cases share one; None when they differ, when a case
    does not record its affine, or when the cache cannot be read."""
    from glioseg.data.nifti import axis_codes
    from glioseg.preprocess.cache import open_cache

    try:
        found = {axis_codes(c.meta["original_affine"])
                 for c in open_cache(cache_dir, validate=False)}
    except (ValueError, OSError, KeyError, TypeError):
        return None
    return list(found.pop()) if len(found) == 1 else None


def _inline(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in d.items())


def _config_of(model: torch.nn.Module) -> ModelConfig:
    cfg = getattr(unwrap_model(model), "config", None)
    if not isinstance(cfg, ModelConfig):
        raise CardError(f"{type(model).__name__} has no ModelConfig in .config; build it with "
                        "glioseg.model.registry.build_model")
    return cfg


def save_card(path: Path, card: ModelCard) -> None:
    write_text(Path(path), card.to_json())


def _carry_over(old: Path, new: Path, skip: tuple[str, ...]) -> None:
    """Hard-link (else copy) into ``new`` the entries of ``old`` other than ``skip``."""
    if not old.is_dir():
        return

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            link_or_copy(str(entry), str(new / entry.name))


def save_model_files(directory: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor],
                     card: ModelCard, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into ``directory`` as one unit.

    Both are written into a temporary folder beside ``directory`` that then replaces it
    (``atomic_dir``); other files of an existing ``directory`` are kept (hard-linked or copied
    into the new folder). A failure leaves the old folder as it was.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        _carry_over(directory, tmp, (WEIGHTS_NAME, CARD_NAME))
        save_state_dict(tmp / WEIGHTS_NAME, state_dict, metadata)
        save_card(tmp / CARD_NAME, card)
    return directory


def save_model(directory: str | os.PathLike[str], model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into ``directory`` (created if needed) as
    one unit (``save_model_files``).

    ``model`` may be wrapped in DDP or ``torch.compile``; the card's ``arch``/``model`` are set
    from the model's own config (the truth, e.g. after ``reset_head``). Returns the folder.
    """
    directory = Path(directory)
    net = unwrap_model(model)
    cfg = _config_of(net)
    card = card.replace(arch=cfg.arch, model=cfg.to_dict())
    if len(card.modalities) != cfg.in_channels:
        raise CardError(f"card lists {len(card.modalities)} modalities {card.modalities} but the "
                        f"model takes {cfg.in_channels} input channels")
    return save_model_files(directory, strip_wrapper_prefixes(net.state_dict()), card,
                            {"format": "pt", "card_format": CARD_FORMAT})


def resolve_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, card)`` paths for a model folder or a ``.safetensors`` file."""
    path = Path(path)
    if not path.exists():
        raise CardError(f"{path}: no such model folder or file")
    problem = not_a_model(path)  # a run folder, a checkpoint, an exported network
    if problem is not None:
        raise CardError(problem)
    if path.is_dir():
        weights, card = path / WEIGHTS_NAME, path / CARD_NAME
    elif path.suffix == ".safetensors":
        weights, card = path, path.with_name(CARD_NAME)
    elif path.name == CARD_NAME:
        weights, card = path.with_name(WEIGHTS_NAME), path
    else:
        raise CardError(f"{path}: expected a model folder, its model.safetensors or its "
                        "card.json")
    if not card.is_file():
        raise CardError(f"{weights}: no model card {card.name} beside the weights; a model "
                        "needs its card (train, finetune and pretrain write both into "
                        "RUN/best and RUN/last)")
    if not weights.is_file():
        raise CardError(f"{card}: no weights file {weights.name} beside the card")
    return weights, card


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of a model folder, ``.safetensors`` file or ``card.json``."""
    path = Path(path)
    card_path = path if path.suffix == ".json" else resolve_paths(path)[1]
    try:
        return ModelCard.from_json(card_path.read_text(encoding="utf-8"))
    except CardError as exc:
        raise CardError(f"{card_path}: {exc}") from None


_READ_TRIES = 50


def read_model_files(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(weights bytes, card bytes)`` of a model folder, ``.safetensors`` or ``card.json``.

    Both files are opened through one handle on their folder: a model folder replaced
    meanwhile (``save_model_files`` renames a new folder in) gives one version or the
    other, never new weights with an old card. The short moment when the folder is absent
    during a replacement is waited out (retried).
    """
    weights_path, card_path = resolve_paths(path)
    folder = weights_path.parent
    for attempt in range(_READ_TRIES):
        try:
            dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            time.sleep(0.01 * (attempt + 1))
            continue
        try:
            out = []
            for name in (weights_path.name, card_path.name):
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                with os.fdopen(fd, "rb") as fh:
                    out.append(fh.read())
            return out[0], out[1]
        except FileNotFoundError:  # the folder was replaced between the two opens
            time.sleep(0.01 * (attempt + 1))
        finally:
            os.close(dfd)
    raise CardError(f"{folder}: the model folder kept changing while it was read")


def digest_of(weights: bytes, card: bytes) -> str:
    """sha256 (hex) naming one version of a model: its weights and its card."""
    h = hashlib.sha256()
    h.update(b"weights\0" + len(weights).to_bytes(8, "little"))
    h.update(weights)
    h.update(b"card\0" + len(card).to_bytes(8, "little"))
    h.update(card)
    return h.hexdigest()


def model_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a saved model's weights and card (``digest_of``)."""
    return digest_of(*read_model_files(path))


def load_model_and_digest(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                          ) -> tuple[torch.nn.Module, ModelCard, str]:
    """``load_model`` and the ``model_digest`` of the very bytes it loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    weights_path, card_path = resolve_paths(path)
    weights, card_bytes = read_model_files(path)
    try:
        card = ModelCard.from_json(card_bytes.decode("utf-8"))
    except (CardError, UnicodeDecodeError) as exc:
        raise CardError(f"{card_path}: {exc}") from None
    if card.partial:
        raise CardError(f"{weights_path}: partial weights ({card.provenance.get('note', 'not a whole model')}); "
                        "load them into a model with glioseg.model.weights.load_adapted, e.g. to fine-tune")
    model = build_model(card.config)
    try:
        state = strip_wrapper_prefixes(load_bytes(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{weights_path}: cannot read the weights: {exc}") from None
    check_state_dict(model, state, where=str(weights_path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card, digest_of(weights, card_bytes)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the network from the card and load the weights strictly; returns it in eval mode.

    ``path`` is a model folder, its ``model.safetensors`` or its ``card.json``; both files are
    read from one version of the folder (``read_model_files``).
    """
    model, card, _ = load_model_and_digest(path, device)
    return model, card

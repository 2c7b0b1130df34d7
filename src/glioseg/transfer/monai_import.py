"""Import MONAI checkpoints: SegResNet, SwinUNETR and the self-supervised Swin encoder.

Supported (nothing is downloaded; the user brings the file):

- ``monai-segresnet``: MONAI model zoo ``brats_mri_segmentation`` bundle, ``models/model.pt``, a
  plain state dict of ``SegResNet(blocks_down=[1,2,2,4], blocks_up=[1,1,1], init_filters=16,
  in_channels=4, out_channels=3, dropout_prob=0.2)``; inputs T1c, T1, T2, FLAIR, outputs TC, WT,
  ET (the bundle's README). Other SegResNet shapes are read off the weights.
- ``swinunetr``: a MONAI ``SwinUNETR`` state dict (bare, or under ``state_dict`` as the MONAI
  research BraTS 2021 recipe saves it; ``module.`` prefixes removed). Its input order must be
  given (``modalities=``): it is whatever the training datalist listed.
- ``swinvit-ssl``: the self-supervised Swin encoder ``model_swinvit.pt`` (``state_dict`` key,
  ``module.`` prefixes, ``mlp.fc1/fc2`` names, pretext heads): mapped to ``swinViT.*`` of a
  SwinUNETR, saved as *partial* weights (encoder only) for :func:`load_adapted`. Keys under
  ``swinViT.`` / ``swin_vit.`` / ``encoder.`` / ``backbone.`` (``SWIN_WRAPPER_PREFIXES``) are
  accepted too, so a whole SwinUNETR state dict gives its Swin encoder.

The networks are the project's MONAI-backed registry entries (``segresnet``, ``swinunetr``),
so the weights load under their own names, strictly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from glioseg.data.labels import REGIONS
from glioseg.model.card import ModelCard
from glioseg.model.registry import ModelConfig, build_model
from glioseg.transfer.foreign_base import (
    ForeignCheckpointError,
    ImportedModel,
    check_names,
    count_groups,
    load_strict,
    provenance_of,
    safe_load,
    state_dict_from,
    to_canonical_order,
)

# --------------------------------------------------------------------------- MONAI SegResNet


def import_monai_segresnet(
    path: str | os.PathLike[str],
    *,
    modalities: Sequence[str] = ("t1ce", "t1", "t2", "flair"),
    regions: Sequence[str] = ("TC", "WT", "ET"),
    dropout: float = 0.2,
    canonical: bool = True,
) -> ImportedModel:
    """A MONAI ``SegResNet`` state dict (the ``brats_mri_segmentation`` bundle's ``model.pt``).

    Defaults are the bundle's: inputs T1c, T1, T2, FLAIR; outputs TC, WT, ET; dropout 0.2
    (used in training only). Architecture sizes are read off the weights.
    """
    path = Path(path)
    state = state_dict_from(safe_load(path), path)
    keys = list(state)
    if "convInit.conv.weight" not in state or "conv_final.2.conv.weight" not in state:
        raise ForeignCheckpointError(f"{path}: not a MONAI SegResNet state dict (no convInit / "
                                     "conv_final.2 weights)")
    if any(re.match(r"up_samples\.\d+\.1\.", k) for k in keys):
        raise ForeignCheckpointError(f"{path}: SegResNet with trainable upsampling (deconv or "
                                     "pixelshuffle) is not supported, only the default")
    w0 = state["convInit.conv.weight"]
    n_down = count_groups(keys, r"down_layers\.(\d+)\.")
    cfg = ModelConfig(
        arch="segresnet",
        in_channels=int(w0.shape[1]),
        out_channels=int(state["conv_final.2.conv.weight"].shape[0]),
        base_width=int(w0.shape[0]),
        dropout=dropout,
        blocks_down=tuple(count_groups(keys, rf"down_layers\.{i}\.(\d+)\.conv1\.") for i in range(n_down)),
        blocks_up=tuple(count_groups(keys, rf"up_layers\.{i}\.(\d+)\.conv1\.")
                        for i in range(count_groups(keys, r"up_layers\.(\d+)\."))),
        deep_supervision=False,
        patch_size=(128, 128, 128),
    )
    return _import_whole(cfg, state, path, modalities, regions, "brats2020", "monai-segresnet",
                         canonical)


def _import_whole(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path,
                  modalities: Sequence[str], regions: Sequence[str], label_scheme: str,
                  kind: str, canonical: bool) -> ImportedModel:
    """Load a whole MONAI network (SegResNet, SwinUNETR) strictly and give it a card: 1 mm,
    z-scored inside the brain, the modalities and regions the user named."""
    check_names(cfg, modalities, regions, path)
    model = load_strict(cfg, state, path)
    card = ModelCard.for_model(
        cfg, modalities=tuple(modalities), regions=tuple(regions), label_scheme=label_scheme,
        preprocessing={"spacing": [1.0, 1.0, 1.0], "normalisation": "zscore-brain"},
        provenance=provenance_of(path, kind))
    imported = ImportedModel(model, dict(model.state_dict()), card)
    return to_canonical_order(imported) if canonical else imported


# --------------------------------------------------------------------------- SwinUNETR

def _swin_config(state: Mapping[str, torch.Tensor], path: Path, out_channels: int) -> ModelConfig:
    keys = list(state)
    pe = state.get("swinViT.patch_embed.proj.weight")
    if pe is None:
        raise ForeignCheckpointError(f"{path}: no Swin patch embedding (swinViT.patch_embed) found")
    if tuple(pe.shape[2:]) != (2, 2, 2):
        raise ForeignCheckpointError(f"{path}: patch size {tuple(pe.shape[2:])} is not supported "
                                     "(only 2)")
    depths, heads = [], []
    for i in range(1, 5):
        depths.append(count_groups(keys, rf"swinViT\.layers{i}\.0\.blocks\.(\d+)\."))
        table = state.get(f"swinViT.layers{i}.0.blocks.0.attn.relative_position_bias_table")
        if table is None:
            raise ForeignCheckpointError(f"{path}: no attention table for Swin stage {i}")
        if table.shape[0] != 13**3:
            raise ForeignCheckpointError(f"{path}: window size other than 7 is not supported")
        heads.append(int(table.shape[1]))
    return ModelConfig(
        arch="swinunetr", in_channels=int(pe.shape[1]), out_channels=out_channels,
        base_width=int(pe.shape[0]), swin_depths=tuple(depths), swin_heads=tuple(heads),
        swin_v2=any(k.startswith("swinViT.layers1c.") for k in keys), deep_supervision=False,
        patch_size=(128, 128, 128))


def import_swinunetr(
    path: str | os.PathLike[str],
    *,
    modalities: Sequence[str],
    regions: Sequence[str] = ("TC", "WT", "ET"),
    canonical: bool = True,
) -> ImportedModel:
    """A whole MONAI ``SwinUNETR`` (bare state dict or under ``state_dict``/``model``).

    ``modalities``: the input order it was trained with (required: a Swin checkpoint does not
    record it). ``regions`` default to MONAI's BraTS conversion (TC, WT, ET).
    """
    path = Path(path)
    state = state_dict_from(safe_load(path), path)
    if "out.conv.conv.weight" not in state:
        raise ForeignCheckpointError(f"{path}: not a whole SwinUNETR (no out.conv weights); for "
                                     "the self-supervised encoder use kind 'swinvit-ssl'")
    cfg = _swin_config(state, path, int(state["out.conv.conv.weight"].shape[0]))
    return _import_whole(cfg, state, path, modalities, regions, "brats2021", "monai-swinunetr",
                         canonical)


SWIN_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "swinViT.", "swin_vit.", "encoder.",
                                          "backbone.")
"""Prefixes in front of the Swin encoder's own keys (``patch_embed.``, ``layersN.``), removed
in any combination: ``module.`` (DDP, as ``model_swinvit.pt`` is saved), ``swinViT.`` (the
encoder inside a whole MONAI SwinUNETR), ``swin_vit.`` (renamed to ``swinViT`` by the MONAI
research-contributions BTCV/BraTS recipes before loading), ``encoder.`` / ``backbone.`` (an
encoder wrapped by a pretraining head)."""


def swinvit_ssl_key(key: str) -> str | None:
    """Key of the self-supervised Swin checkpoint -> SwinUNETR key, or None for tensors that
    are not the Swin encoder's (pretext heads; a whole SwinUNETR's CNN encoder and decoder).

    ``SWIN_WRAPPER_PREFIXES`` are removed first, but only where the Swin encoder's own key
    follows (``encoder.layers1.0...`` is the encoder; ``encoder1.layer...`` is not)."""
    rest = key
    while rest.startswith(SWIN_WRAPPER_PREFIXES):
        rest = rest.split(".", 1)[1]
    if not re.match(r"(patch_embed|layers\d+c?)\.", rest):
        return None
    rest = rest.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
    return f"swinViT.{rest}"


def import_swinvit_ssl(
    path: str | os.PathLike[str],
    *,
    modalities: Sequence[str] = ("ct",),
) -> ImportedModel:
    """The self-supervised Swin encoder (``model_swinvit.pt``): partial weights (``swinViT.*``).

    The published file was pretrained on CT (one channel): ``modalities`` names its channels,
    and :func:`load_adapted` gives every MRI sequence the mean filter, scaled (see there).
    """
    path = Path(path)
    raw = state_dict_from(safe_load(path), path, keys=("state_dict",))
    state, skipped, origin = {}, [], {}
    for k, v in raw.items():
        new = swinvit_ssl_key(k)
        if new is None:
            skipped.append(k)
        elif new in state:
            raise ForeignCheckpointError(f"{path}: {origin[new]!r} and {k!r} are both the Swin "
                                         f"encoder's {new!r} (two encoders in one file?)")
        else:
            state[new], origin[new] = v, k
    cfg = _swin_config(state, path, out_channels=3)
    check_names(cfg, modalities, REGIONS, path)
    reference = {k: v for k, v in build_model(cfg).state_dict().items() if k.startswith("swinViT.")}
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    reshaped = [k for k in reference if k in state and state[k].shape != reference[k].shape]
    if missing or extra or reshaped:
        raise ForeignCheckpointError(
            f"{path}: the Swin encoder does not match MONAI's SwinTransformer: missing "
            f"{missing[:5]}, unexpected {extra[:5]}, reshaped {reshaped[:5]}")
    note = (f"Swin encoder only ({len(state)} tensors); {len(skipped)} other tensors (pretext "
            "heads, a CNN decoder) skipped")
    card = ModelCard.for_model(
        cfg, modalities=tuple(modalities), regions=(), label_scheme="none",
        preprocessing={"spacing": None, "normalisation": "unknown"},
        provenance=provenance_of(path, "swinvit-ssl", partial=True, note=note,
                               skipped=skipped))
    return ImportedModel(None, state, card, [note])

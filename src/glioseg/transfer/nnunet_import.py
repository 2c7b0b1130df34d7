"""Import checkpoints of other toolkits into the project's format (weights + model card).

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
- ``nnunet``: nnU-Net v2 ``checkpoint_final.pth`` (``network_weights``, ``init_args`` with plans
  and dataset.json, ``trainer_name``) of a ``PlainConvUNet``. Its topology is the project's
  ``unet3d`` (same blocks, same order), so the weights are renamed into ``unet3d``; kernels and
  strides are read off the weights, checked against the plans. nnU-Net feeds the network arrays
  in SimpleITK's (Z, Y, X) order (``array_axes="zyx"``, its default reader) then applies the
  plans' ``transpose_forward``; the project's arrays are (X, Y, Z), so every spatial kernel axis
  is permuted to match, and the imported model gives on an (X, Y, Z) volume what nnU-Net gives
  on the same volume read its way.

Files are read only with ``torch.load(path, map_location="cpu", weights_only=True)``, which
builds tensors and plain containers but runs no code from the file. NumPy scalars and dtypes
(data, found in nnU-Net's training log) are allowlisted; any other Python object makes the load
fail with :class:`UnsafeCheckpointError`, which says how to convert the file once, where it is
trusted, into a state-dict-only file.

``canonical=True`` (default) rearranges the imported model into the project's order -- inputs
t1, t1ce, t2, flair and outputs WT, TC, ET -- by name, when the checkpoint has exactly those
sequences and regions under any names (an exact permutation, no approximation); otherwise the
card keeps the checkpoint's own names and order.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.errors import GliosegError
from glioseg.model.card import (
    ModelCard,
    check_state_dict,
    save_model,
    save_model_files,
    strip_wrapper_prefixes,
)
from glioseg.model.registry import ModelConfig, build_model
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


def _state_dict_from(obj: Any, path: Path, keys: Sequence[str] = ("state_dict", "model",
                                                                    "network_weights")
                     ) -> dict[str, torch.Tensor]:
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


def _provenance(path: Path, fmt: str, **more: Any) -> dict[str, Any]:
    return {"source": "imported", "format": fmt, "file": str(path), **more}


def _load_strict(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    model = build_model(cfg)
    check_state_dict(model, state, where=f"{path} (after mapping)")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _canonical(imported: ImportedModel) -> ImportedModel:
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


# --------------------------------------------------------------------------- MONAI SegResNet

def _count(keys: Sequence[str], pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


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
    state = _state_dict_from(safe_load(path), path)
    keys = list(state)
    if "convInit.conv.weight" not in state or "conv_final.2.conv.weight" not in state:
        raise ForeignCheckpointError(f"{path}: not a MONAI SegResNet state dict (no convInit / "
                                     "conv_final.2 weights)")
    if any(re.match(r"up_samples\.\d+\.1\.", k) for k in keys):
        raise ForeignCheckpointError(f"{path}: SegResNet with trainable upsampling (deconv or "
                                     "pixelshuffle) is not supported, only the default")
    w0 = state["convInit.conv.weight"]
    n_down = _count(keys, r"down_layers\.(\d+)\.")
    cfg = ModelConfig(
        arch="segresnet",
        in_channels=int(w0.shape[1]),
        out_channels=int(state["conv_final.2.conv.weight"].shape[0]),
        base_width=int(w0.shape[0]),
        dropout=dropout,
        blocks_down=tuple(_count(keys, rf"down_layers\.{i}\.(\d+)\.conv1\.") for i in range(n_down)),
        blocks_up=tuple(_count(keys, rf"up_layers\.{i}\.(\d+)\.conv1\.")
                        for i in range(_count(keys, r"up_layers\.(\d+)\."))),
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
    _check_names(cfg, modalities, regions, path)
    model = _load_strict(cfg, state, path)
    card = ModelCard.for_model(
        cfg, modalities=tuple(modalities), regions=tuple(regions), label_scheme=label_scheme,
        preprocessing={"spacing": [1.0, 1.0, 1.0], "normalisation": "zscore-brain"},
        provenance=_provenance(path, kind))
    imported = ImportedModel(model, dict(model.state_dict()), card)
    return _canonical(imported) if canonical else imported


def _check_names(cfg: ModelConfig, modalities: Sequence[str], regions: Sequence[str],
                 path: Path) -> None:
    if len(modalities) != cfg.in_channels:
        raise ForeignCheckpointError(f"{path}: the network takes {cfg.in_channels} input "
                                     f"channels but {len(modalities)} modalities were named "
                                     f"{tuple(modalities)}")
    if len(regions) != cfg.out_channels:
        raise ForeignCheckpointError(f"{path}: the network has {cfg.out_channels} outputs but "
                                     f"{len(regions)} were named {tuple(regions)}")


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
        depths.append(_count(keys, rf"swinViT\.layers{i}\.0\.blocks\.(\d+)\."))
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
    state = _state_dict_from(safe_load(path), path)
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
    raw = _state_dict_from(safe_load(path), path, keys=("state_dict",))
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
    _check_names(cfg, modalities, REGIONS, path)
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
        provenance=_provenance(path, "swinvit-ssl", partial=True, note=note,
                               skipped=skipped))
    return ImportedModel(None, state, card, [note])


# --------------------------------------------------------------------------- nnU-Net v2

_NNUNET_PATTERNS = (
    (re.compile(r"^encoder\.stages\.(\d+)\.(?:0\.)?convs\.(\d+)\.(conv|norm)\.(weight|bias)$"),
     "encoder.stages.{0}.convs.{1}.{2}.{3}"),
    (re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$"),
     "decoder.stages.{0}.convs.{1}.{2}.{3}"),
    (re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$"), "decoder.upsample.{0}.{1}"),
    (re.compile(r"^decoder\.seg_layers\.(\d+)\.(weight|bias)$"), "decoder.heads.{0}.{1}"),
)


def nnunet_key(key: str) -> str | None:
    """nnU-Net ``PlainConvUNet`` key -> ``unet3d`` key; None for the duplicate views nnU-Net's
    state dict also holds (``...all_modules.N`` and ``decoder.encoder.*``)."""
    if ".all_modules." in key or key.startswith("decoder.encoder."):
        return None
    for pattern, template in _NNUNET_PATTERNS:
        m = pattern.match(key)
        if m:
            return template.format(*m.groups())
    raise ForeignCheckpointError(f"nnU-Net key {key!r} has no counterpart in unet3d (only "
                                 "PlainConvUNet with conv-norm-nonlin blocks is supported)")


def _axis_map(array_axes: str, transpose_forward: Sequence[int]) -> list[int]:
    """For each project axis b (X, Y, Z): the nnU-Net network axis that carries it."""
    if array_axes not in ("zyx", "xyz"):
        raise ForeignCheckpointError(f"array_axes must be 'zyx' (SimpleITK, nnU-Net's default "
                                     f"reader) or 'xyz' (NibabelIO), got {array_axes!r}")
    tf = [int(t) for t in transpose_forward]
    ours_of_net = [(2 - t) if array_axes == "zyx" else t for t in tf]
    net_of_ours = [0, 0, 0]
    for a, b in enumerate(ours_of_net):
        net_of_ours[b] = a
    return net_of_ours


def _permute_spatial(t: torch.Tensor, net_of_ours: Sequence[int]) -> torch.Tensor:
    if t.ndim != 5:
        return t
    return t.permute(0, 1, *[2 + a for a in net_of_ours]).contiguous()


def _nnunet_plans(ckpt: Mapping[str, Any], configuration: str | None) -> tuple[dict, dict, dict]:
    """(configuration dict with inheritance resolved, plans, dataset_json) or empty dicts."""
    init = ckpt.get("init_args") or {}
    plans = init.get("plans") or {}
    dataset_json = init.get("dataset_json") or {}
    name = configuration or init.get("configuration")
    configs = plans.get("configurations", {})
    if not name or name not in configs:
        return {}, plans, dataset_json
    conf = dict(configs[name])
    seen = {name}
    while "inherits_from" in conf and conf["inherits_from"] not in seen:
        parent = conf.pop("inherits_from")
        seen.add(parent)
        conf = {**configs.get(parent, {}), **conf}
    conf["_name"] = name
    return conf, plans, dataset_json


def _nnunet_names(dataset_json: Mapping[str, Any], n_in: int, n_out: int,
                  modalities: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Input names, output names and the output activation from nnU-Net's dataset.json."""
    if modalities is None:
        channels = dataset_json.get("channel_names") or dataset_json.get("modality")
        if not channels:
            raise ForeignCheckpointError("the checkpoint does not name its input channels "
                                         "(no dataset.json): pass modalities=...")
        modalities = [channels[k] for k in sorted(channels, key=int)]
    labels = dataset_json.get("labels") or {}
    region_based = any(isinstance(v, list | tuple) for v in labels.values())
    if region_based:
        outputs = tuple(canonical_region(k) for k in labels if k != "background")
        activation = "sigmoid"
    else:
        outputs = tuple(k for k, _ in sorted(labels.items(), key=lambda kv: int(kv[1])))
        activation = "softmax"
    if len(outputs) != n_out:
        outputs = tuple(f"output{i}" for i in range(n_out))
    mods = tuple(canonical_modality(m) for m in modalities)
    if len(mods) != n_in:
        raise ForeignCheckpointError(f"the network takes {n_in} input channels but "
                                     f"{len(mods)} are named {mods}")
    return mods, outputs, activation


def _nnunet_config(state: Mapping[str, torch.Tensor], conf: Mapping[str, Any],
                   net_of_ours: Sequence[int], path: Path) -> ModelConfig:
    """``unet3d`` config read off the (already renamed, not yet permuted) weights."""
    keys = list(state)
    n = _count(keys, r"encoder\.stages\.(\d+)\.")
    if n < 2:
        raise ForeignCheckpointError(f"{path}: found {n} encoder stages")
    w = [state[f"encoder.stages.{s}.convs.0.conv.weight"] for s in range(n)]
    widths = [int(x.shape[0]) for x in w]
    base, top = widths[0], max(widths)
    if widths != [min(base * 2**s, top) for s in range(n)]:
        raise ForeignCheckpointError(f"{path}: features per stage {widths} do not follow "
                                     "min(base * 2**s, max); not representable as unet3d")
    kernels = [tuple(int(x.shape[2 + a]) for a in net_of_ours) for x in w]
    strides = [(1, 1, 1)] + [
        tuple(int(state[f"decoder.upsample.{n - 1 - s}.weight"].shape[2 + a]) for a in net_of_ours)
        for s in range(1, n)]
    arch = (conf.get("architecture") or {}).get("arch_kwargs") or {}
    if arch.get("strides"):
        planned = [tuple(int(st[a]) for a in net_of_ours) for st in arch["strides"]]
        if planned != strides:
            raise ForeignCheckpointError(f"{path}: strides in the plans {planned} differ from "
                                         f"the weights {strides}")
    nonlin = str(arch.get("nonlin") or "torch.nn.LeakyReLU")
    if nonlin.split(".")[-1] not in ("LeakyReLU", "ReLU"):
        raise ForeignCheckpointError(f"{path}: nonlinearity {nonlin} is not supported")
    slope = 0.0 if nonlin.endswith(".ReLU") else float(
        (arch.get("nonlin_kwargs") or {}).get("negative_slope", 1e-2))
    norm = str(arch.get("norm_op") or "InstanceNorm3d")
    if "InstanceNorm" not in norm:
        raise ForeignCheckpointError(f"{path}: normalisation {norm} is not supported")
    if (arch.get("norm_op_kwargs") or {}).get("affine") is False:
        raise ForeignCheckpointError(f"{path}: InstanceNorm without affine parameters is not "
                                     "supported")
    if arch.get("dropout_op"):
        raise ForeignCheckpointError(f"{path}: dropout in the network is not supported")
    eps = float((arch.get("norm_op_kwargs") or {}).get("eps", 1e-5))
    return ModelConfig(
        arch="unet3d",
        in_channels=int(w[0].shape[1]),
        out_channels=int(state["decoder.heads.0.weight"].shape[0]),
        base_width=base, n_stages=n, max_width=top,
        kernel_sizes=tuple(kernels),  # type: ignore[arg-type]
        strides=tuple(strides),  # type: ignore[arg-type]
        n_conv_per_stage=tuple(_count(keys, rf"encoder\.stages\.{s}\.convs\.(\d+)\.conv\.weight")
                               for s in range(n)),
        n_conv_per_stage_decoder=tuple(
            _count(keys, rf"decoder\.stages\.{j}\.convs\.(\d+)\.conv\.weight") for j in range(n - 1)),
        conv_bias="encoder.stages.0.convs.0.conv.bias" in state,
        norm_eps=eps, negative_slope=slope, deep_supervision=True,
        patch_size=tuple(int(conf["patch_size"][a]) for a in net_of_ours)  # type: ignore[arg-type]
        if conf.get("patch_size") else (128, 128, 128),
    )


def import_nnunet(
    path: str | os.PathLike[str],
    *,
    configuration: str | None = None,
    array_axes: str = "zyx",
    modalities: Sequence[str] | None = None,
    canonical: bool = True,
) -> ImportedModel:
    """nnU-Net v2 ``checkpoint_final.pth`` (or a bare ``PlainConvUNet`` state dict) -> unet3d.

    Args:
        configuration: plans configuration (default: the one in ``init_args``).
        array_axes: the axis order nnU-Net's reader gave the arrays: ``zyx`` for its default
            SimpleITK reader, ``xyz`` for NibabelIO.
        modalities: input names, when the checkpoint carries no dataset.json.
    """
    path = Path(path)
    ckpt = safe_load(path)
    if not isinstance(ckpt, Mapping):
        raise ForeignCheckpointError(f"{path}: expected an nnU-Net checkpoint dict")
    raw = _state_dict_from(ckpt, path, keys=("network_weights",))
    class_name = str(((_nnunet_plans(ckpt, configuration)[0].get("architecture") or {})
                      .get("network_class_name")) or "PlainConvUNet")
    if not class_name.endswith("PlainConvUNet") or any(".stem." in k for k in raw):
        raise ForeignCheckpointError(f"{path}: network {class_name} is not supported; only "
                                     "nnU-Net's PlainConvUNet maps onto unet3d")
    bad_buffers = [k for k in raw if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    if bad_buffers:
        raise ForeignCheckpointError(f"{path}: normalisation with running statistics "
                                     f"({bad_buffers[0]}) is not supported")
    renamed = {}
    for k, v in raw.items():
        new = nnunet_key(k)
        if new is not None:
            renamed[new] = v
    conf, plans, dataset_json = _nnunet_plans(ckpt, configuration)
    net_of_ours = _axis_map(array_axes, plans.get("transpose_forward", (0, 1, 2)))
    cfg = _nnunet_config(renamed, conf, net_of_ours, path)
    state = {k: _permute_spatial(v, net_of_ours) for k, v in renamed.items()}
    model = _load_strict(cfg, state, path)
    mods, outputs, activation = _nnunet_names(dataset_json, cfg.in_channels, cfg.out_channels,
                                              modalities)
    spacing = conf.get("spacing")
    schemes = conf.get("normalization_schemes") or []
    masks = conf.get("use_mask_for_norm") or []
    zscore_brain = bool(schemes) and all(s == "ZScoreNormalization" for s in schemes) and all(masks)
    card = ModelCard.for_model(
        cfg, modalities=mods, regions=outputs,
        label_scheme="brats2021" if activation == "sigmoid" else "nnunet",
        preprocessing={
            "spacing": [float(spacing[a]) for a in net_of_ours] if spacing else None,
            "normalisation": "zscore-brain" if zscore_brain else f"nnunet:{','.join(schemes)}",
        },
        provenance=_provenance(
            path, "nnunet-v2", trainer_name=ckpt.get("trainer_name"),
            configuration=conf.get("_name"), fold=(ckpt.get("init_args") or {}).get("fold"),
            dataset=plans.get("dataset_name"), output_activation=activation,
            array_axes=array_axes, epoch=ckpt.get("current_epoch")),
    )
    notes = [] if activation == "sigmoid" else [
        f"label-based nnU-Net model ({', '.join(outputs)}, softmax): fine-tune with a new head "
        "for the project's WT/TC/ET regions"]
    imported = ImportedModel(model, dict(model.state_dict()), card, notes)
    return _canonical(imported) if canonical else imported


IMPORTERS: dict[str, Callable[..., ImportedModel]] = {
    "monai-segresnet": import_monai_segresnet,
    "swinunetr": import_swinunetr,
    "swinvit-ssl": import_swinvit_ssl,
    "nnunet": import_nnunet,
}


def import_checkpoint(path: str | os.PathLike[str], kind: str, **kwargs: Any) -> ImportedModel:
    """Import ``path`` with the importer ``kind`` (see :data:`IMPORTERS`)."""
    try:
        importer = IMPORTERS[kind]
    except KeyError:
        raise ForeignCheckpointError(f"unknown checkpoint kind {kind!r}; known: "
                                     f"{', '.join(IMPORTERS)}") from None
    try:  # an option this kind does not take or needs (--modalities): the user's error
        inspect.signature(importer).bind(path, **kwargs)
    except TypeError:
        try:  # the call fails before any work; Python's own message, as the CLI always printed
            importer(path, **kwargs)
        except TypeError as exc:
            raise ForeignCheckpointError(str(exc)) from None
    return importer(path, **kwargs)

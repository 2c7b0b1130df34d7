"""Import nnU-Net v2 checkpoints of a ``PlainConvUNet`` as the project's ``unet3d``.

``nnunet``: nnU-Net v2 ``checkpoint_final.pth`` (``network_weights``, ``init_args`` with plans
and dataset.json, ``trainer_name``) of a ``PlainConvUNet``. Its topology is the project's
``unet3d`` (same blocks, same order), so the weights are renamed into ``unet3d``
(``nnunet_key``); kernels and strides are read off the weights, checked against the plans.
nnU-Net feeds the network arrays in SimpleITK's (Z, Y, X) order (``array_axes="zyx"``, its
default reader) then applies the plans' ``transpose_forward``; the project's arrays are
(X, Y, Z), so every spatial kernel axis is permuted to match, and the imported model gives on
an (X, Y, Z) volume what nnU-Net gives on the same volume read its way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glioseg.model.card import ModelCard
from glioseg.model.registry import ModelConfig
from glioseg.model.weights import canonical_modality, canonical_region
from glioseg.transfer.foreign_base import (
    ForeignCheckpointError,
    ImportedModel,
    count_groups,
    load_strict,
    provenance_of,
    safe_load,
    state_dict_from,
    to_canonical_order,
)

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
    n = count_groups(keys, r"encoder\.stages\.(\d+)\.")
    if n < 2:
        raise ForeignCheckpointError(f"{path}: found {n} encoder stages")
    w = [state[f"encoder.stages.{s}.convs.0.conv.weight"] for s in range(n)]
    base, top = _stage_widths(w, path)
    kernels = [tuple(int(x.shape[2 + a]) for a in net_of_ours) for x in w]
    strides = _weight_strides(state, n, net_of_ours)
    arch = (conf.get("architecture") or {}).get("arch_kwargs") or {}
    _check_planned_strides(arch, strides, net_of_ours, path)
    slope, eps = _block_ops(arch, path)
    return ModelConfig(
        arch="unet3d",
        in_channels=int(w[0].shape[1]),
        out_channels=int(state["decoder.heads.0.weight"].shape[0]),
        base_width=base, n_stages=n, max_width=top,
        kernel_sizes=tuple(kernels),  # type: ignore[arg-type]
        strides=tuple(strides),  # type: ignore[arg-type]
        n_conv_per_stage=tuple(count_groups(keys, rf"encoder\.stages\.{s}\.convs\.(\d+)\.conv\.weight")
                               for s in range(n)),
        n_conv_per_stage_decoder=tuple(
            count_groups(keys, rf"decoder\.stages\.{j}\.convs\.(\d+)\.conv\.weight") for j in range(n - 1)),
        conv_bias="encoder.stages.0.convs.0.conv.bias" in state,
        norm_eps=eps, negative_slope=slope, deep_supervision=True,
        patch_size=tuple(int(conf["patch_size"][a]) for a in net_of_ours)  # type: ignore[arg-type]
        if conf.get("patch_size") else (128, 128, 128),
    )


def _stage_widths(w: Sequence[torch.Tensor], path: Path) -> tuple[int, int]:
    """(base, max) features of the encoder stages; they must follow min(base * 2**s, max)."""
    widths = [int(x.shape[0]) for x in w]
    base, top = widths[0], max(widths)
    if widths != [min(base * 2**s, top) for s in range(len(w))]:
        raise ForeignCheckpointError(f"{path}: features per stage {widths} do not follow "
                                     "min(base * 2**s, max); not representable as unet3d")
    return base, top


def _weight_strides(state: Mapping[str, torch.Tensor], n: int,
                    net_of_ours: Sequence[int]) -> list[tuple[int, ...]]:
    """Stride of each encoder stage in project axes, read off the transposed convolutions."""
    return [(1, 1, 1)] + [
        tuple(int(state[f"decoder.upsample.{n - 1 - s}.weight"].shape[2 + a]) for a in net_of_ours)
        for s in range(1, n)]


def _check_planned_strides(arch: Mapping[str, Any], strides: Sequence[tuple[int, ...]],
                           net_of_ours: Sequence[int], path: Path) -> None:
    """Raise when the plans name strides other than the weights'."""
    if arch.get("strides"):
        planned = [tuple(int(st[a]) for a in net_of_ours) for st in arch["strides"]]
        if planned != strides:
            raise ForeignCheckpointError(f"{path}: strides in the plans {planned} differ from "
                                         f"the weights {strides}")


def _block_ops(arch: Mapping[str, Any], path: Path) -> tuple[float, float]:
    """(negative slope, norm eps) of the plans' blocks; raise for unsupported operations."""
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
    return slope, eps


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
    raw = state_dict_from(ckpt, path, keys=("network_weights",))
    _check_supported(ckpt, raw, configuration, path)
    renamed = _renamed(raw)
    conf, plans, dataset_json = _nnunet_plans(ckpt, configuration)
    net_of_ours = _axis_map(array_axes, plans.get("transpose_forward", (0, 1, 2)))
    cfg = _nnunet_config(renamed, conf, net_of_ours, path)
    state = {k: _permute_spatial(v, net_of_ours) for k, v in renamed.items()}
    model = load_strict(cfg, state, path)
    mods, outputs, activation = _nnunet_names(dataset_json, cfg.in_channels, cfg.out_channels,
                                              modalities)
    card = ModelCard.for_model(
        cfg, modalities=mods, regions=outputs,
        label_scheme="brats2021" if activation == "sigmoid" else "nnunet",
        preprocessing=_nnunet_preprocessing(conf, net_of_ours),
        provenance=provenance_of(
            path, "nnunet-v2", trainer_name=ckpt.get("trainer_name"),
            configuration=conf.get("_name"), fold=(ckpt.get("init_args") or {}).get("fold"),
            dataset=plans.get("dataset_name"), output_activation=activation,
            array_axes=array_axes, epoch=ckpt.get("current_epoch")),
    )
    notes = [] if activation == "sigmoid" else [
        f"label-based nnU-Net model ({', '.join(outputs)}, softmax): fine-tune with a new head "
        "for the project's WT/TC/ET regions"]
    imported = ImportedModel(model, dict(model.state_dict()), card, notes)
    return to_canonical_order(imported) if canonical else imported


def _check_supported(ckpt: Mapping[str, Any], raw: Mapping[str, torch.Tensor],
                     configuration: str | None, path: Path) -> None:
    """Raise unless the network is a PlainConvUNet without running normalisation statistics."""
    class_name = str(((_nnunet_plans(ckpt, configuration)[0].get("architecture") or {})
                      .get("network_class_name")) or "PlainConvUNet")
    if not class_name.endswith("PlainConvUNet") or any(".stem." in k for k in raw):
        raise ForeignCheckpointError(f"{path}: network {class_name} is not supported; only "
                                     "nnU-Net's PlainConvUNet maps onto unet3d")
    bad_buffers = [k for k in raw if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    if bad_buffers:
        raise ForeignCheckpointError(f"{path}: normalisation with running statistics "
                                     f"({bad_buffers[0]}) is not supported")


def _renamed(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nnU-Net's weights under their ``unet3d`` names, duplicate views dropped."""
    renamed = {}
    for k, v in raw.items():
        new = nnunet_key(k)
        if new is not None:
            renamed[new] = v
    return renamed


def _nnunet_preprocessing(conf: Mapping[str, Any], net_of_ours: Sequence[int]) -> dict[str, Any]:
    """The card's preprocessing entry: spacing in project axes and the normalisation."""
    spacing = conf.get("spacing")
    schemes = conf.get("normalization_schemes") or []
    masks = conf.get("use_mask_for_norm") or []
    zscore_brain = bool(schemes) and all(s == "ZScoreNormalization" for s in schemes) and all(masks)
    return {
        "spacing": [float(spacing[a]) for a in net_of_ours] if spacing else None,
        "normalisation": "zscore-brain" if zscore_brain else f"nnunet:{','.join(schemes)}",
    }

"""Model configuration, presets and the registry of backbones.

Every backbone built here shares one interface, so that training, transfer learning and
inference never ask which network they hold:

- input ``(B, C, X, Y, Z)`` float with every spatial size divisible by ``model.divisor``
  (a :class:`ModelInputError` otherwise: padding to a multiple is the job of the caller, e.g.
  sliding-window inference, which pads the volume to at least one patch);
- ``forward(x)`` returns region logits ``(B, out_channels, X, Y, Z)`` (channels WT, TC, ET;
  apply a sigmoid), except in training mode with deep supervision on, where it returns a list
  of logits, full resolution first, then each coarser scale;
- ``forward_features(x) -> list[Tensor]`` the encoder outputs (skips), finest first;
- ``config`` the :class:`ModelConfig` it was built from (``reset_head`` keeps it up to date);
- ``input_conv_key`` the state-dict key of the first convolution weight
  ``(out, in_channels, k, k, k)``; ``input_conv_keys`` every weight that sees the raw input;
- ``head_prefixes`` state-dict key prefixes of the output heads; ``reset_head(out_channels)``;
- ``stage_groups()`` state-dict key prefixes grouped by depth, from the input to the head
  (every parameter falls in exactly one group), and ``encoder_prefixes`` (the encoder's keys):
  what freezing and layer-wise learning rates use;
- ``divisor`` (int) and ``divisors`` (per axis; they differ only with anisotropic strides).

New backbones plug in with :func:`register_model`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from glioseg.errors import GliosegError

Triple = tuple[int, int, int]


class ModelConfigError(GliosegError, ValueError):
    """A model configuration that cannot be built."""


class ModelInputError(GliosegError, ValueError):
    """An input tensor the model cannot take (wrong rank, channels or spatial size)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every model card.

    Fields not used by an architecture are ignored by it (noted per field).
    """

    arch: str = "unet3d"  # registry name: "unet3d", "segresnet", "swinunetr" or a registered one
    in_channels: int = 4  # input sequences, in the order of the card's modalities
    out_channels: int = 3  # output channels: the regions WT, TC, ET (sigmoid, not softmax)
    base_width: int = 32  # unet3d: features of stage 0; segresnet: init_filters;
    # swinunetr: feature_size (a multiple of 12)
    n_stages: int = 6  # unet3d: resolution stages incl. the bottleneck (divisor 2**(n_stages-1))
    max_width: int = 320  # unet3d: cap on features per stage (nnU-Net's 3D cap)
    kernel_size: int = 3  # unet3d: isotropic kernel of every conv, unless kernel_sizes is given
    kernel_sizes: tuple[Triple, ...] = ()  # unet3d: per-stage kernels; () = kernel_size everywhere
    strides: tuple[Triple, ...] = ()  # unet3d: per-stage strides; () = (1,1,1) then (2,2,2)
    n_conv_per_stage: int | tuple[int, ...] = 2  # unet3d encoder convs per stage (nnU-Net: 2)
    n_conv_per_stage_decoder: int | tuple[int, ...] = 2  # unet3d decoder convs per stage
    conv_bias: bool = True  # bias before InstanceNorm is redundant but kept as in nnU-Net v2
    norm_eps: float = 1e-5  # InstanceNorm epsilon (nnU-Net and torch default)
    negative_slope: float = 1e-2  # LeakyReLU slope (nnU-Net default)
    deep_supervision: bool = True  # unet3d: extra 1x1x1 heads per decoder scale while training
    gradient_checkpointing: bool = False  # recompute each encoder stage in backward: less memory
    dropout: float = 0.0  # segresnet: dropout after the first conv (MONAI bundle: 0.2)
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)  # segresnet: residual blocks per encoder level
    blocks_up: tuple[int, ...] = (1, 1, 1)  # segresnet: residual blocks per decoder level
    swin_depths: tuple[int, ...] = (2, 2, 2, 2)  # swinunetr: transformer blocks per stage
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)  # swinunetr: attention heads per stage
    swin_v2: bool = False  # swinunetr: SwinUNETR-v2 (residual conv before each stage)
    patch_size: Triple = (128, 128, 128)  # training patch and default sliding-window ROI (voxels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: _to_tuples(v) for k, v in data.items()})

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_to_tuples(v) for v in value)
    return value


PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on a 2-core CPU: 2 mm volumes, 64^3 patches, 4 stages 16-32-64-128.
    "small": ModelConfig(base_width=16, n_stages=4, max_width=128, patch_size=(64, 64, 64)),
    # BraTS on a GPU, nnU-Net's 3d_fullres topology: 128^3 patches, 6 stages 32..320.
    "full": ModelConfig(base_width=32, n_stages=6, max_width=320, patch_size=(128, 128, 128)),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (``small`` or ``full``), with optional field overrides."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


ModelBuilder = Callable[[ModelConfig], torch.nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}
_BUILTIN: dict[str, str] = {
    "unet3d": "glioseg.model.unet3d:UNet3D",
    "segresnet": "glioseg.model.monai_nets:SegResNetModel",
    "swinunetr": "glioseg.model.monai_nets:SwinUNETRModel",
}


def register_model(name: str, builder: ModelBuilder, *, overwrite: bool = False) -> None:
    """Make ``build_model`` build ``builder(cfg)`` when ``cfg.arch == name``.

    The builder must return a module with the interface described in this module's docstring.
    """
    if not overwrite and (name in _REGISTRY or name in _BUILTIN):
        raise ModelConfigError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = builder


def available_models() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def _builder(name: str) -> ModelBuilder:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise ModelConfigError(f"unknown model architecture {name!r}; known: {available_models()}")


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    """Build the model ``cfg.arch`` from its configuration (weights freshly initialised)."""
    return _builder(cfg.arch)(cfg)


def check_input(x: torch.Tensor, in_channels: int, divisors: Triple) -> None:
    """Raise :class:`ModelInputError` unless ``x`` is ``(B, in_channels, X, Y, Z)`` with each
    spatial size a multiple of the matching divisor. Skipped while tracing (ONNX export)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    if x.ndim != 5:
        raise ModelInputError(f"expected input (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ModelInputError(
            f"the model takes {in_channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
    spatial = tuple(int(s) for s in x.shape[2:])
    if any(s % d for s, d in zip(spatial, divisors, strict=True)):
        raise ModelInputError(
            f"spatial size {spatial} is not a multiple of {tuple(divisors)} in every axis; "
            "pad the input (sliding-window inference does) or choose another patch size"
        )


def check_patch_size(cfg: ModelConfig, divisors: Triple) -> None:
    """Raise :class:`ModelConfigError` unless ``cfg.patch_size`` fits the network."""
    if len(cfg.patch_size) != 3 or any(p % d for p, d in zip(cfg.patch_size, divisors, strict=True)):
        raise ModelConfigError(f"patch_size {tuple(cfg.patch_size)} is not a multiple of the "
                               f"network's divisors {tuple(divisors)}")


def divisors_of(strides: tuple[Triple, ...]) -> Triple:
    """Per-axis product of the strides: the size every input axis must be a multiple of."""
    out = [1, 1, 1]
    for s in strides:
        for a in range(3):
            out[a] *= int(s[a])
    return (out[0], out[1], out[2])


__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "ModelInputError",
    "PRESETS",
    "available_models",
    "build_model",
    "check_input",
    "check_patch_size",
    "divisors_of",
    "preset",
    "register_model",
]

"""nnU-Net-style 3D U-Net: strided-conv encoder, transposed-conv decoder, deep supervision.

Topology (the same as nnU-Net v2's ``PlainConvUNet``, so its checkpoints map onto this one):

- encoder stage ``s`` = ``n_conv_per_stage`` x (conv -> InstanceNorm -> LeakyReLU), the first
  conv strided by ``strides[s]`` (stage 0 has stride 1); features ``min(base * 2**s, max)``;
- decoder stage ``j`` (``j = 0`` next to the bottleneck) = transposed conv (kernel = stride)
  up to the resolution of skip ``n_stages - 2 - j``, concatenation with that skip, then
  ``n_conv_per_stage_decoder`` conv blocks;
- a 1x1x1 head after every decoder stage (``decoder.heads.j``); the last one is the output, the
  others are used only for deep supervision in training but always exist, so that weights
  trained with deep supervision load into a model without it and back.

State-dict keys: ``encoder.stages.{s}.convs.{i}.{conv,norm}.*``, ``decoder.upsample.{j}.*``,
``decoder.stages.{j}.convs.{i}.{conv,norm}.*``, ``decoder.heads.{j}.*``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from glioseg.model.blocks import StackedConvs, Triple, he_init, per_stage
from glioseg.model.registry import (
    ModelConfig,
    ModelConfigError,
    check_input,
    check_patch_size,
    divisors_of,
)


def stage_widths(cfg: ModelConfig) -> tuple[int, ...]:
    """Features of each encoder stage: ``min(base_width * 2**s, max_width)``."""
    return tuple(min(cfg.base_width * 2**s, cfg.max_width) for s in range(cfg.n_stages))


def stage_kernels(cfg: ModelConfig) -> tuple[Triple, ...]:
    if cfg.kernel_sizes:
        if len(cfg.kernel_sizes) != cfg.n_stages:
            raise ModelConfigError(
                f"kernel_sizes has {len(cfg.kernel_sizes)} entries, n_stages is {cfg.n_stages}"
            )
        return tuple(tuple(int(k) for k in ks) for ks in cfg.kernel_sizes)  # type: ignore[misc]
    k = cfg.kernel_size
    return ((k, k, k),) * cfg.n_stages


def stage_strides(cfg: ModelConfig) -> tuple[Triple, ...]:
    if cfg.strides:
        if len(cfg.strides) != cfg.n_stages:
            raise ModelConfigError(
                f"strides has {len(cfg.strides)} entries, n_stages is {cfg.n_stages}"
            )
        return tuple(tuple(int(s) for s in st) for st in cfg.strides)  # type: ignore[misc]
    return ((1, 1, 1),) + ((2, 2, 2),) * (cfg.n_stages - 1)


class Encoder(nn.Module):
    """``(B, C, X, Y, Z)`` -> list of ``n_stages`` feature maps, finest first (the skips)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths, kernels, strides = stage_widths(cfg), stage_kernels(cfg), stage_strides(cfg)
        n_convs = per_stage(cfg.n_conv_per_stage, cfg.n_stages, "n_conv_per_stage")
        opts = dict(bias=cfg.conv_bias, eps=cfg.norm_eps, negative_slope=cfg.negative_slope)
        stages, in_ch = [], cfg.in_channels
        for s in range(cfg.n_stages):
            stages.append(StackedConvs(n_convs[s], in_ch, widths[s], kernels[s], strides[s], **opts))
            in_ch = widths[s]
        self.stages = nn.ModuleList(stages)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Skips (finest first) -> logits ``(B, out, X, Y, Z)``, or in training with deep
    supervision a list of ``n_stages - 1`` logits, full resolution first."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths, kernels, strides = stage_widths(cfg), stage_kernels(cfg), stage_strides(cfg)
        n_convs = per_stage(cfg.n_conv_per_stage_decoder, cfg.n_stages - 1, "n_conv_per_stage_decoder")
        opts = dict(bias=cfg.conv_bias, eps=cfg.norm_eps, negative_slope=cfg.negative_slope)
        upsample, stages, heads = [], [], []
        for j in range(cfg.n_stages - 1):
            below, skip = widths[-1 - j], widths[-2 - j]
            stride = strides[-1 - j]
            upsample.append(nn.ConvTranspose3d(below, skip, stride, stride, bias=cfg.conv_bias))
            stages.append(StackedConvs(n_convs[j], 2 * skip, skip, kernels[-2 - j], **opts))
            heads.append(nn.Conv3d(skip, cfg.out_channels, 1, bias=True))
        self.upsample = nn.ModuleList(upsample)
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.deep_supervision = cfg.deep_supervision

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        supervise = self.deep_supervision and self.training
        outputs = []
        for j, (up, stage) in enumerate(zip(self.upsample, self.stages, strict=True)):
            x = stage(torch.cat((up(x), skips[-2 - j]), dim=1))
            if supervise:
                outputs.append(self.heads[j](x))
        if supervise:
            return outputs[::-1]
        return self.heads[-1](x)


class UNet3D(nn.Module):
    """nnU-Net-style 3D U-Net (see the module docstring); built from a :class:`ModelConfig`.

    Input ``(B, in_channels, X, Y, Z)`` float, each spatial size a multiple of ``divisor``
    (``2**(n_stages-1)`` with the default strides); output region logits
    ``(B, out_channels, X, Y, Z)`` or, training with deep supervision, a list of logits
    ``[(B, out, X, Y, Z), (B, out, X/2, Y/2, Z/2), ...]`` (``n_stages - 1`` scales).
    """

    input_conv_key = "encoder.stages.0.convs.0.conv.weight"
    input_conv_keys = (input_conv_key,)
    head_prefixes = ("decoder.heads.",)
    encoder_prefixes = ("encoder.",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.n_stages < 2:
            raise ModelConfigError(f"unet3d needs at least 2 stages, got {cfg.n_stages}")
        self.config = cfg
        self.divisors = divisors_of(stage_strides(cfg))
        check_patch_size(cfg, self.divisors)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.apply(lambda m: he_init(m, cfg.negative_slope))

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (the largest per-axis divisor;
        all are powers of two, so it covers every axis)."""
        return max(self.divisors)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, self.config.in_channels, self.divisors)
        skips = self.encoder(x)
        return self.decoder(skips)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs, finest first: ``[(B, w0, X, Y, Z), (B, w1, X/2, ...), ...]``."""
        check_input(x, self.config.in_channels, self.divisors)
        return self.encoder(x)

    def reset_head(self, out_channels: int) -> None:
        """Replace every head by a freshly initialised one with ``out_channels`` outputs."""
        device = self.decoder.heads[0].weight.device
        heads = [nn.Conv3d(h.in_channels, out_channels, 1, bias=True) for h in self.decoder.heads]
        for h in heads:
            he_init(h, self.config.negative_slope)
        self.decoder.heads = nn.ModuleList(heads).to(device)
        self.config = self.config.replace(out_channels=out_channels)

    def stage_groups(self) -> list[tuple[str, ...]]:
        """State-dict key prefixes by depth, input first: encoder stages, decoder stages (with
        their upsampling), then the heads."""
        groups: list[tuple[str, ...]] = [
            (f"encoder.stages.{s}.",) for s in range(len(self.encoder.stages))
        ]
        groups += [
            (f"decoder.upsample.{j}.", f"decoder.stages.{j}.")
            for j in range(len(self.decoder.stages))
        ]
        groups.append(self.head_prefixes)
        return groups

"""Building blocks of the 3D U-Net: conv -> InstanceNorm (affine) -> LeakyReLU, stacked.

Layer names (``conv``, ``norm``, ``act``, ``convs``) are part of the checkpoint format: the
state-dict keys of :mod:`glioseg.model.unet3d` are built from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from glioseg.errors import InputError

Triple = tuple[int, int, int]


class ConvNormAct(nn.Module):
    """``Conv3d`` (same padding) -> ``InstanceNorm3d(affine=True)`` -> ``LeakyReLU``.

    Input ``(B, in_ch, X, Y, Z)`` -> output ``(B, out_ch, X/s, Y/s, Z/s)`` for stride ``s``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: Triple,
        stride: Triple = (1, 1, 1),
        *,
        bias: bool = True,
        eps: float = 1e-5,
        negative_slope: float = 1e-2,
    ) -> None:
        super().__init__()
        padding = tuple((k - 1) // 2 for k in kernel)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride, padding=padding, bias=bias)
        self.norm = nn.InstanceNorm3d(out_ch, eps=eps, affine=True)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class StackedConvs(nn.Module):
    """``n`` :class:`ConvNormAct` in a row; only the first one is strided."""

    def __init__(
        self,
        n: int,
        in_ch: int,
        out_ch: int,
        kernel: Triple,
        first_stride: Triple = (1, 1, 1),
        **kwargs: float | bool,
    ) -> None:
        super().__init__()
        if n < 1:
            raise InputError(f"a stage needs at least one convolution, got {n}")
        layers = [ConvNormAct(in_ch, out_ch, kernel, first_stride, **kwargs)]  # type: ignore[arg-type]
        layers += [ConvNormAct(out_ch, out_ch, kernel, **kwargs) for _ in range(n - 1)]  # type: ignore[arg-type]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def he_init(module: nn.Module, negative_slope: float = 1e-2) -> None:
    """nnU-Net's initialisation: He (Kaiming) normal for (transposed) convolutions, zero bias."""
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=negative_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def per_stage(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """Broadcast an int to ``n`` stages or check a per-stage sequence has ``n`` entries."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise InputError(f"{what} needs {n} entries (one per stage), got {len(value)}: {value}")
    return value

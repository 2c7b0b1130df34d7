"""MONAI's SegResNet and SwinUNETR behind the project's model interface.

The wrappers subclass the MONAI networks, so their state-dict keys are exactly MONAI's: a
MONAI checkpoint (e.g. the model zoo's ``brats_mri_segmentation`` bundle) loads unchanged.
Deep supervision does not apply to them: ``forward`` always returns one logits tensor.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.segresnet_block import get_conv_layer
from monai.networks.nets import SegResNet, SwinUNETR
from torch.utils.checkpoint import checkpoint

from glioseg.model.registry import ModelConfig, ModelConfigError, check_input, check_patch_size


class SegResNetModel(SegResNet):
    """MONAI ``SegResNet`` (Myronenko 2018, without the VAE branch), ``init_filters`` =
    ``cfg.base_width``, levels from ``cfg.blocks_down`` / ``cfg.blocks_up``.

    Input ``(B, in_channels, X, Y, Z)``, each spatial size a multiple of
    ``2**(len(blocks_down) - 1)``; output logits ``(B, out_channels, X, Y, Z)``.
    """

    input_conv_key = "convInit.conv.weight"
    input_conv_keys = (input_conv_key,)
    head_prefixes = ("conv_final.2.",)  # only the last 1x1x1 conv; its norm stays trained
    encoder_prefixes = ("convInit.", "down_layers.")

    def __init__(self, cfg: ModelConfig) -> None:
        if len(cfg.blocks_up) != len(cfg.blocks_down) - 1:
            raise ModelConfigError(
                f"segresnet needs len(blocks_up) == len(blocks_down) - 1, got {cfg.blocks_up} "
                f"and {cfg.blocks_down}"
            )
        super().__init__(
            spatial_dims=3,
            init_filters=cfg.base_width,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            dropout_prob=cfg.dropout or None,
            blocks_down=tuple(cfg.blocks_down),
            blocks_up=tuple(cfg.blocks_up),
        )
        self.config = cfg
        n = len(cfg.blocks_down) - 1
        self.divisors = (2**n, 2**n, 2**n)
        self.divisor = 2**n
        check_patch_size(cfg, self.divisors)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # MONAI's encode, with optional gradient checkpointing of each down level.
        x = self.convInit(x)
        if self.dropout_prob is not None:
            x = self.dropout(x)
        down_x = []
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for down in self.down_layers:
            x = checkpoint(down, x, use_reentrant=False) if use_ckpt else down(x)
            down_x.append(x)
        return x, down_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels, self.divisors)
        return super().forward(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each down level, finest first."""
        check_input(x, self.config.in_channels, self.divisors)
        return self.encode(x)[1]

    def reset_head(self, out_channels: int) -> None:
        device = self.conv_final[2].conv.weight.device
        conv = get_conv_layer(3, self.init_filters, out_channels, kernel_size=1, bias=True)
        self.conv_final[2] = conv.to(device)
        self.config = self.config.replace(out_channels=out_channels)

    def stage_groups(self) -> list[tuple[str, ...]]:
        n = len(self.down_layers)
        groups: list[tuple[str, ...]] = [("convInit.", "down_layers.0.")]
        groups += [(f"down_layers.{i}.",) for i in range(1, n)]
        groups += [(f"up_samples.{i}.", f"up_layers.{i}.") for i in range(len(self.up_layers))]
        groups.append(("conv_final.0.",))
        groups.append(self.head_prefixes)
        return groups


class SwinUNETRModel(SwinUNETR):
    """MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022), ``feature_size`` = ``cfg.base_width``
    (a multiple of 12), ``depths`` / ``num_heads`` from ``cfg.swin_depths`` / ``cfg.swin_heads``.

    Input ``(B, in_channels, X, Y, Z)``, each spatial size a multiple of 32; output logits
    ``(B, out_channels, X, Y, Z)``. The raw input feeds both the patch embedding and the
    first residual conv block: both are in ``input_conv_keys``.
    """

    input_conv_key = "swinViT.patch_embed.proj.weight"
    input_conv_keys = (
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
    )
    head_prefixes = ("out.",)
    encoder_prefixes = (
        "swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.",
    )

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.base_width % 12:
            raise ModelConfigError(f"swinunetr needs base_width a multiple of 12, got {cfg.base_width}")
        super().__init__(
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            feature_size=cfg.base_width,
            depths=tuple(cfg.swin_depths),
            num_heads=tuple(cfg.swin_heads),
            use_checkpoint=cfg.gradient_checkpointing,
            use_v2=cfg.swin_v2,
        )
        self.config = cfg
        self.divisors = (32, 32, 32)
        self.divisor = 32
        check_patch_size(cfg, self.divisors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels, self.divisors)
        return super().forward(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The Swin transformer's hidden states, finest first (5 maps, patch size 2)."""
        check_input(x, self.config.in_channels, self.divisors)
        return list(self.swinViT(x, self.normalize))

    def reset_head(self, out_channels: int) -> None:
        device = self.out.conv.conv.weight.device
        self.out = UnetOutBlock(3, self.out.conv.conv.in_channels, out_channels).to(device)
        self.config = self.config.replace(out_channels=out_channels)

    def stage_groups(self) -> list[tuple[str, ...]]:
        return [
            ("swinViT.patch_embed.", "encoder1."),
            ("swinViT.layers1.", "encoder2."),
            ("swinViT.layers2.", "encoder3."),
            ("swinViT.layers3.", "encoder4."),
            ("swinViT.layers4.", "encoder10."),
            ("decoder5.",),
            ("decoder4.",),
            ("decoder3.",),
            ("decoder2.",),
            ("decoder1.",),
            self.head_prefixes,
        ]

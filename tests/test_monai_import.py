"""Foreign checkpoints: built with the libraries' own classes, saved in their layout, imported,
and compared with the original modules on the same input.

Tolerance: the imported networks run the same operations on the same numbers, possibly on
permuted axes, so outputs agree to float32 rounding: rtol 1e-4, atol 1e-4 on logits of order 1.
"""

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet, SwinUNETR

from glioseg.model.card import load_model
from glioseg.model.registry import build_model
from glioseg.model.weights import load_adapted
from glioseg.transfer.foreign import (
    ForeignCheckpointError,
    UnsafeCheckpointError,
    import_checkpoint,
    import_monai_segresnet,
    import_nnunet,
    import_swinunetr,
    import_swinvit_ssl,
)

torch.set_num_threads(1)
TOL = dict(rtol=1e-4, atol=1e-4)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (norm scales too) so that a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module.eval()


def test_monai_segresnet_bundle(tmp_path):
    net = randomise(SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16,
                              in_channels=4, out_channels=3, dropout_prob=0.2))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    x = torch.randn(1, 4, 16, 16, 8)  # project order t1, t1ce, t2, flair
    x_bundle = x[:, [1, 0, 2, 3]]  # the bundle's order t1ce, t1, t2, flair
    with torch.no_grad():
        ref = net(x_bundle)  # TC, WT, ET

    raw = import_monai_segresnet(tmp_path / "model.pt", canonical=False)
    assert raw.card.modalities == ("t1ce", "t1", "t2", "flair")
    assert raw.card.model["blocks_down"] == [1, 2, 2, 4] and raw.card.model["base_width"] == 16
    with torch.no_grad():
        torch.testing.assert_close(raw.model(x_bundle), ref, **TOL)

    imported = import_checkpoint(tmp_path / "model.pt", "monai-segresnet")
    assert imported.card.modalities == ("t1", "t1ce", "t2", "flair")
    assert imported.card.regions == ("WT", "TC", "ET")
    with torch.no_grad():
        torch.testing.assert_close(imported.model(x), ref[:, [1, 0, 2]], **TOL)
    # saved in the project's format, loaded strictly
    loaded, card = load_model(imported.save(tmp_path / "ours"))
    assert card.provenance["format"] == "monai-segresnet"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref[:, [1, 0, 2]], **TOL)


def small_swin(in_channels: int = 4) -> SwinUNETR:
    return randomise(SwinUNETR(in_channels=in_channels, out_channels=3, feature_size=12,
                               depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)))


def test_swinunetr_full_state_dict(tmp_path):
    net = small_swin()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               tmp_path / "swin.pt")
    order = ("flair", "t1ce", "t1", "t2")
    imported = import_swinunetr(tmp_path / "swin.pt", modalities=order)
    assert imported.card.model["swin_depths"] == [1, 1, 1, 1]
    x = torch.randn(1, 4, 64, 64, 64)  # t1, t1ce, t2, flair
    with torch.no_grad():
        ref = net(x[:, [3, 1, 0, 2]])  # TC, WT, ET
        torch.testing.assert_close(imported.model(x), ref[:, [1, 0, 2]], **TOL)


def ssl_layout(net: SwinUNETR) -> dict:
    """The self-supervised checkpoint's layout: module. prefixes, mlp.fc1/fc2, pretext heads."""
    state = {}
    for k, v in net.swinViT.state_dict().items():
        k = k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        state[f"module.{k}"] = v
    state["module.rotation_head.weight"] = torch.zeros(4, 8)
    state["module.contrastive_head.weight"] = torch.zeros(16, 8)
    return {"epoch": 100, "state_dict": state}


def test_swinvit_ssl_encoder(tmp_path):
    net = small_swin(in_channels=1)
    torch.save(ssl_layout(net), tmp_path / "model_swinvit.pt")
    imported = import_swinvit_ssl(tmp_path / "model_swinvit.pt")
    assert imported.model is None and imported.card.partial
    assert all(k.startswith("swinViT.") for k in imported.state_dict)
    saved = imported.save(tmp_path / "enc")
    with pytest.raises(ValueError, match="load_adapted"):
        load_model(saved)

    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net.swinViT(x, True)
    # same single channel: identical encoder features
    one = build_model(imported.card.config)
    report = load_adapted(one, imported.state_dict, imported.card)
    assert not [k for k in report.new if k.startswith("swinViT.")]
    assert report.unused == []
    with torch.no_grad():
        for a, b in zip(one.eval().forward_features(x), ref, strict=True):
            torch.testing.assert_close(a, b, **TOL)
    # four MRI sequences from the one-channel encoder: the filter, divided by 4, on each;
    # four equal channels give the original features
    four = build_model(imported.card.config.replace(in_channels=4))
    report = load_adapted(four, imported.state_dict, imported.card, ("t1", "t1ce", "t2", "flair"))
    assert "swinViT.patch_embed.proj.weight" in report.adapted
    with torch.no_grad():
        for a, b in zip(four.eval().forward_features(x.repeat(1, 4, 1, 1, 1)), ref, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def _fc_names(key: str) -> str:
    return key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")


@pytest.mark.parametrize("layout", ["whole-ddp", "swin_vit", "encoder"])
def test_swinvit_ssl_encoder_under_wrapper_prefixes(tmp_path, layout):
    """The Swin encoder under the prefixes MONAI's recipes meet: a whole SwinUNETR saved from
    DDP (``module.swinViT.*`` beside its CNN encoder/decoder), the research pretraining's
    ``swin_vit.*`` (which the BTCV/BraTS fine-tuning scripts rename to ``swinViT``), and an
    encoder wrapped by a pretext model (``module.encoder.*``)."""
    net = small_swin(in_channels=1)
    if layout == "whole-ddp":
        state = {f"module.{k}": v for k, v in net.state_dict().items()}
    elif layout == "swin_vit":
        state = {f"swin_vit.{_fc_names(k)}": v for k, v in net.swinViT.state_dict().items()}
        state["rotation_head.weight"] = torch.zeros(4, 8)
    else:
        state = {f"module.encoder.{_fc_names(k)}": v for k, v in net.swinViT.state_dict().items()}
        state["module.contrastive_head.weight"] = torch.zeros(16, 8)
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "model_swinvit.pt")
    imported = import_checkpoint(tmp_path / "model_swinvit.pt", "swinvit-ssl")
    n_swin = len(net.swinViT.state_dict())
    assert sorted(imported.state_dict) == sorted(f"swinViT.{k}" for k in net.swinViT.state_dict())
    assert len(imported.card.provenance["skipped"]) == len(state) - n_swin
    one = build_model(imported.card.config)
    report = load_adapted(one, imported.state_dict, imported.card)
    assert not [k for k in report.new if k.startswith("swinViT.")] and report.unused == []
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net.swinViT(x, True)
        for a, b in zip(one.eval().forward_features(x), ref, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_swinvit_ssl_keys_and_two_encoders_in_one_file(tmp_path):
    from glioseg.transfer.foreign import swinvit_ssl_key

    assert swinvit_ssl_key("swin_vit.layers1.0.blocks.0.mlp.fc1.weight") == \
        "swinViT.layers1.0.blocks.0.mlp.linear1.weight"
    assert swinvit_ssl_key("encoder.swinViT.patch_embed.proj.bias") == \
        "swinViT.patch_embed.proj.bias"
    assert swinvit_ssl_key("encoder1.layer.conv1.conv.weight") is None  # SwinUNETR's CNN branch
    assert swinvit_ssl_key("swinViT.layersX.weight") is None
    enc = small_swin(in_channels=1).swinViT.state_dict()
    state = {**{f"module.{k}": v for k, v in enc.items()},
             **{f"swin_vit.{k}": v for k, v in enc.items()}}
    torch.save({"state_dict": state}, tmp_path / "two.pt")
    with pytest.raises(ForeignCheckpointError, match="two encoders"):
        import_swinvit_ssl(tmp_path / "two.pt")


def nnunet_checkpoint(tmp_path, transpose_forward=(0, 1, 2)):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs = dict(
        input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d,
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[2, 2, 2], num_classes=3, n_conv_per_stage_decoder=[2, 2],
        conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    net = randomise(PlainConvUNet(**kwargs))
    arch_kwargs = {k: v for k, v in kwargs.items() if k not in ("input_channels", "num_classes",
                                                                 "deep_supervision")}
    arch_kwargs.update(conv_op="torch.nn.modules.conv.Conv3d",
                       norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
                       nonlin="torch.nn.LeakyReLU")
    plans = {
        "dataset_name": "Dataset999_Test", "transpose_forward": list(transpose_forward),
        "configurations": {
            "3d_fullres": {"patch_size": [16, 32, 48], "spacing": [1.5, 1.0, 0.5],
                           "normalization_schemes": ["ZScoreNormalization"] * 4,
                           "use_mask_for_norm": [True] * 4,
                           "architecture": {"network_class_name":
                                            "dynamic_network_architectures.architectures.unet."
                                            "PlainConvUNet", "arch_kwargs": arch_kwargs}},
            "3d_lowres": {"inherits_from": "3d_fullres", "spacing": [3.0, 2.0, 1.0]},
        },
    }
    dataset_json = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3]}
    ckpt = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "current_epoch": 1000, "optimizer_state": {},
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": dataset_json},
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.7)]}}
    torch.save(ckpt, tmp_path / "checkpoint_final.pth")
    net.decoder.deep_supervision = False
    return net


@pytest.mark.parametrize("array_axes, transpose_forward",
                         [("zyx", (0, 1, 2)), ("xyz", (0, 1, 2)), ("zyx", (2, 0, 1))])
def test_nnunet_plain_conv_unet(tmp_path, array_axes, transpose_forward):
    net = nnunet_checkpoint(tmp_path, transpose_forward)
    imported = import_nnunet(tmp_path / "checkpoint_final.pth", array_axes=array_axes)
    # what nnU-Net does: read the file into reader axes, transpose_forward, run the network
    x_net = torch.randn(1, 4, 6, 8, 12)  # network axes; strides (1,2,2) then (2,2,2)
    tf = list(transpose_forward)
    reader_of_net = tf  # network axis a is reader axis tf[a]
    net_of_reader = [reader_of_net.index(r) for r in range(3)]
    x_reader = x_net.permute(0, 1, *[2 + a for a in net_of_reader])
    x_ours = x_reader.permute(0, 1, 4, 3, 2) if array_axes == "zyx" else x_reader
    with torch.no_grad():
        out_net = net(x_net)
        out_reader = out_net.permute(0, 1, *[2 + a for a in net_of_reader])
        expected = out_reader.permute(0, 1, 4, 3, 2) if array_axes == "zyx" else out_reader
        torch.testing.assert_close(imported.model.eval()(x_ours), expected, **TOL)
    card = imported.card
    assert card.regions == ("WT", "TC", "ET") and card.modalities == ("t1", "t1ce", "t2", "flair")
    assert card.provenance["trainer_name"] == "nnUNetTrainer"
    assert card.preprocessing["normalisation"] == "zscore-brain"
    spacing_reader = [[1.5, 1.0, 0.5][net_of_reader[r]] for r in range(3)]
    expected_spacing = spacing_reader[::-1] if array_axes == "zyx" else spacing_reader
    assert card.preprocessing["spacing"] == expected_spacing


def test_nnunet_configuration_inheritance(tmp_path):
    nnunet_checkpoint(tmp_path)
    imported = import_nnunet(tmp_path / "checkpoint_final.pth", configuration="3d_lowres")
    assert imported.card.preprocessing["spacing"] == [1.0, 2.0, 3.0]  # zyx -> xyz
    assert imported.card.provenance["configuration"] == "3d_lowres"


def test_nnunet_bare_state_dict_needs_modality_names(tmp_path):
    net = nnunet_checkpoint(tmp_path)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ForeignCheckpointError, match="pass modalities"):
        import_nnunet(tmp_path / "bare.pth")
    imported = import_nnunet(tmp_path / "bare.pth", modalities=("t1", "t1ce", "t2", "flair"))
    assert imported.card.regions == ("output0", "output1", "output2")


class NotData:
    pass


def test_pickled_objects_are_refused_with_a_way_out(tmp_path):
    torch.save({"network_weights": {}, "trainer": NotData()}, tmp_path / "unsafe.pth")
    with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely") as info:
        import_nnunet(tmp_path / "unsafe.pth")
    assert "weights_only=False" in str(info.value) and "torch.save" in str(info.value)


def test_unsupported_layouts_are_clear_errors(tmp_path):
    torch.save({"network_weights": {"encoder.stem.convs.0.conv.weight": torch.zeros(1)}},
               tmp_path / "resenc.pth")
    with pytest.raises(ForeignCheckpointError, match="not supported"):
        import_nnunet(tmp_path / "resenc.pth")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ForeignCheckpointError, match="not a MONAI SegResNet"):
        import_monai_segresnet(tmp_path / "other.pt")
    with pytest.raises(ForeignCheckpointError, match="unknown checkpoint kind"):
        import_checkpoint(tmp_path / "other.pt", "caffe")

"""``glioseg.transfer.nnunet_import``: an nnU-Net v2 ``PlainConvUNet`` built with
dynamic_network_architectures, saved as nnU-Net saves it, imported as ``unet3d`` and compared
with the original network on the same input, axes as nnU-Net reads them (tolerance:
``foreign_nets.TOL``).
"""

import numpy as np
import pytest
import torch
from foreign_nets import TOL, randomise

from glioseg.transfer.foreign_base import ForeignCheckpointError
from glioseg.transfer.nnunet_import import import_nnunet, nnunet_key

torch.set_num_threads(1)


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


def test_nnunet_keys_by_hand():
    assert nnunet_key("encoder.stages.2.0.convs.1.norm.weight") == \
        "encoder.stages.2.convs.1.norm.weight"
    assert nnunet_key("decoder.stages.0.convs.0.conv.bias") == "decoder.stages.0.convs.0.conv.bias"
    assert nnunet_key("decoder.transpconvs.1.weight") == "decoder.upsample.1.weight"
    assert nnunet_key("decoder.seg_layers.2.bias") == "decoder.heads.2.bias"
    # the duplicate views nnU-Net's state dict also holds
    assert nnunet_key("encoder.stages.0.0.convs.0.all_modules.0.weight") is None
    assert nnunet_key("decoder.encoder.stages.0.0.convs.0.conv.weight") is None
    with pytest.raises(ForeignCheckpointError, match="no counterpart in unet3d"):
        nnunet_key("encoder.stem.convs.0.conv.weight")

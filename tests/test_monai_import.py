"""``glioseg.transfer.monai_import``: MONAI SegResNet, SwinUNETR and the self-supervised Swin
encoder, built with MONAI's own classes, saved in their layout, imported, and compared with
the original modules on the same input (tolerance: ``foreign_nets.TOL``).
"""

import pytest
import torch
from foreign_nets import TOL, randomise
from monai.networks.nets import SegResNet, SwinUNETR

from glioseg.model.card import load_model
from glioseg.model.registry import build_model
from glioseg.model.weights import load_adapted
from glioseg.transfer.foreign import import_checkpoint
from glioseg.transfer.foreign_base import ForeignCheckpointError
from glioseg.transfer.monai_import import (
    import_monai_segresnet,
    import_swinunetr,
    import_swinvit_ssl,
    swinvit_ssl_key,
)

torch.set_num_threads(1)


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

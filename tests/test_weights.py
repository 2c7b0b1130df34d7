"""Adapted weight loading: modality mapping by name, head replacement, the load report."""

import pytest
import torch

from glioseg.model.card import ModelCard, WeightsMismatchError, save_model
from glioseg.model.registry import ModelConfig, build_model
from glioseg.model.weights import adapt_input_filters, load_adapted, load_pretrained

torch.set_num_threads(1)
KEY = "encoder.stages.0.convs.0.conv.weight"


def tiny(**kw) -> ModelConfig:
    base = dict(base_width=4, n_stages=3, max_width=16, patch_size=(16, 16, 16))
    base.update(kw)
    return ModelConfig(**base)


def source_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny(**kw)).eval()
    with torch.no_grad():  # norm affine params away from (1, 0) so that a wrong copy shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def card_of(model, **kw) -> ModelCard:
    return ModelCard.for_model(model, **kw)


def test_permuted_modality_order_gives_the_same_outputs():
    src = source_model()
    target_order = ("flair", "t2", "t1", "t1ce")
    dst = build_model(tiny()).eval()
    report = load_adapted(dst, src.state_dict(), card_of(src), target_order)
    assert report.adapted == [KEY] and not report.new and not report.unused
    x = torch.randn(1, 4, 16, 16, 8)
    source_index = {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3}
    x_target = x[:, [source_index[m] for m in target_order]]
    with torch.no_grad():
        torch.testing.assert_close(dst(x_target), src(x), rtol=1e-5, atol=1e-5)


def test_fewer_sequences_keep_their_filters_scaled():
    src = source_model()
    dst = build_model(tiny(in_channels=2))
    report = load_adapted(dst, src.state_dict(), card_of(src), ("flair", "t1ce"))
    w = src.state_dict()[KEY]
    expected = torch.stack([w[:, 3], w[:, 1]], dim=1) * (4 / 2)
    torch.testing.assert_close(dst.state_dict()[KEY], expected)
    assert report.adapted == [KEY]
    assert any("scaled by 4/2" in n for n in report.notes)


def test_missing_sequence_gets_the_mean_filter():
    src = source_model(in_channels=2)
    card = card_of(src, modalities=("t1", "t2"))
    dst = build_model(tiny(in_channels=3))
    load_adapted(dst, src.state_dict(), card, ("t2", "flair", "t1"))
    w = src.state_dict()[KEY]
    mean = (w[:, 0] + w[:, 1]) / 2
    expected = torch.stack([w[:, 1], mean, w[:, 0]], dim=1) * (2 / 3)
    torch.testing.assert_close(dst.state_dict()[KEY], expected)


def test_one_channel_encoder_spread_over_four_sequences():
    # the sum of the new filters over the channels equals the old filter: same response to a
    # volume whose four channels are equal
    src = source_model(in_channels=1)
    dst = build_model(tiny()).eval()
    load_adapted(dst, src.state_dict(), card_of(src, modalities=("ct",)), ("t1", "t1ce", "t2",
                                                                          "flair"))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(x.repeat(1, 4, 1, 1, 1)), src(x), rtol=1e-4, atol=1e-5)


def test_sequence_aliases_are_the_same_sequences():
    src = source_model()
    card = card_of(src, modalities=("T1N", "T1C", "T2W", "T2F"))  # BraTS 2023 file names
    dst = build_model(tiny())
    report = load_adapted(dst, src.state_dict(), card, ("t1", "t1ce", "t2", "flair"))
    assert KEY in report.loaded and not report.adapted
    torch.testing.assert_close(dst.state_dict()[KEY], src.state_dict()[KEY], rtol=0, atol=0)


def test_report_on_extra_missing_and_reshaped_tensors():
    src = source_model(base_width=4, max_width=8)
    dst = build_model(tiny())  # widths 4, 8, 16 vs source 4, 8, 8
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(3)
    dropped = "decoder.stages.1.convs.1.norm.bias"
    del state[f"module.{dropped}"]
    report = load_adapted(dst, state, card_of(src))
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    reshaped = {k for k in dst_sd if k in src_sd and src_sd[k].shape != dst_sd[k].shape}
    assert reshaped  # the bottleneck and what touches it
    assert set(report.new) == reshaped | {dropped}
    assert set(report.unused) == reshaped | {"extra.weight"}
    assert set(report.loaded) == set(dst_sd) - reshaped - {dropped}
    for k in report.loaded:
        torch.testing.assert_close(dst_sd[k], src_sd[k], rtol=0, atol=0)
    text = str(report)
    assert f"{len(report.loaded)} tensors loaded unchanged" in text
    assert f"{len(reshaped) + 1} newly initialised" in text
    assert len(report.reshaped) == len(reshaped)
    assert "decoder.upsample.0.weight ((8, 8, 2, 2, 2) vs (16, 8, 2, 2, 2))" in report.reshaped


def test_other_outputs_get_a_new_head_and_reuse_the_rest():
    src = source_model(out_channels=4)
    card = card_of(src, regions=("background", "NCR", "ED", "ET"), label_scheme="nnunet")
    dst = build_model(tiny())
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("decoder.heads.")}
    report = load_adapted(dst, src.state_dict(), card)
    assert set(report.new) == set(head_before)
    assert set(report.unused) == set(head_before)
    for k, v in head_before.items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0)
    assert any("new head" in n for n in report.notes)
    assert len(report.loaded) == len(dst.state_dict()) - len(head_before)


def test_head_rows_permuted_by_region_name():
    src = source_model()
    dst = build_model(tiny()).eval()
    report = load_adapted(dst, src.state_dict(), card_of(src, regions=("TC", "WT", "ET")))
    assert len(report.adapted) == 2 * 2  # weight and bias of both heads
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x)[:, [1, 0, 2]], rtol=1e-5, atol=1e-5)


def test_nothing_fits_is_an_error():
    dst = build_model(tiny())
    with pytest.raises(WeightsMismatchError, match="no tensor of the checkpoint fits"):
        load_adapted(dst, {"a.weight": torch.zeros(1)}, card_of(dst))


def test_wrong_modality_count_is_an_error():
    src = source_model()
    with pytest.raises(WeightsMismatchError, match="3 input channels"):
        load_adapted(build_model(tiny(in_channels=3)), src.state_dict(), card_of(src))
    with pytest.raises(WeightsMismatchError, match="channels"):
        adapt_input_filters(torch.zeros(2, 3, 1, 1, 1), ("t1", "t2"), ("t1",))


def test_load_pretrained_from_a_saved_model(tmp_path):
    src = source_model()
    save_model(tmp_path, src, card_of(src))
    dst = build_model(tiny()).eval()
    report, card = load_pretrained(dst, tmp_path)
    assert not report.new and not report.adapted and card.arch == "unet3d"
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_load_pretrained_from_a_run_folder_names_its_model_folders(tmp_path):
    """``finetune --from RUN`` (``train.init_from``): the run's best/ is what to pass."""
    from glioseg.model.card import CardError

    src = source_model()
    save_model(tmp_path / "run" / "best", src, card_of(src))
    (tmp_path / "run" / "last.pt").write_bytes(b"checkpoint")
    with pytest.raises(CardError, match=f"^{tmp_path / 'run'} is a training run folder, not a "
                       f"model; pass {tmp_path / 'run' / 'best'}$"):
        load_pretrained(build_model(tiny()), tmp_path / "run")

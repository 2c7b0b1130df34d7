"""Model registry and backbones: shapes, divisibility errors, deep supervision, the interface."""

import pytest
import torch

from glioseg.model.registry import (
    ModelConfig,
    ModelConfigError,
    ModelInputError,
    build_model,
    preset,
    register_model,
)

torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    base = dict(base_width=4, n_stages=4, max_width=16, patch_size=(32, 32, 32))
    base.update(kw)
    return ModelConfig(**base)


def test_unet_output_shape_for_odd_multiples_of_the_divisor():
    model = build_model(tiny()).eval()
    assert model.divisor == 8  # 2 ** (4 - 1)
    x = torch.randn(2, 4, 24, 40, 56)  # 3, 5 and 7 times the divisor
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 24, 40, 56)


def test_deep_supervision_list_in_training_full_resolution_first():
    model = build_model(tiny()).train()
    out = model(torch.randn(1, 4, 24, 40, 56))
    assert isinstance(out, list)
    assert [tuple(o.shape) for o in out] == [(1, 3, 24, 40, 56), (1, 3, 12, 20, 28), (1, 3, 6, 10, 14)]


def test_no_list_without_deep_supervision():
    model = build_model(tiny(deep_supervision=False)).train()
    out = model(torch.randn(1, 4, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize("shape", [(1, 4, 20, 24, 24), (1, 4, 24, 24, 12)])
def test_size_not_multiple_of_divisor_is_a_clear_error(shape):
    model = build_model(tiny()).eval()
    with pytest.raises(ModelInputError, match="not a multiple of"):
        model(torch.randn(*shape))


def test_wrong_channel_count_is_a_clear_error():
    model = build_model(tiny()).eval()
    with pytest.raises(ModelInputError, match="4 input channels, got 3"):
        model(torch.randn(1, 3, 16, 16, 16))


def test_stage_widths_follow_base_times_two_capped():
    model = build_model(preset("full"))
    sd = model.state_dict()
    widths = [sd[f"encoder.stages.{s}.convs.0.conv.weight"].shape[0] for s in range(6)]
    assert widths == [32, 64, 128, 256, 320, 320]
    assert model.divisor == 32
    assert sd[model.input_conv_key].shape == (32, 4, 3, 3, 3)
    # the full-resolution decoder stage takes the skip (32) concatenated with the upsampled 32
    assert sd["decoder.stages.4.convs.0.conv.weight"].shape == (32, 64, 3, 3, 3)


def test_anisotropic_strides_and_kernels():
    cfg = tiny(n_stages=3, strides=((1, 1, 1), (2, 2, 1), (2, 2, 2)),
               kernel_sizes=((3, 3, 1), (3, 3, 3), (3, 3, 3)))
    model = build_model(cfg).eval()
    assert model.divisors == (4, 4, 2)
    assert model.state_dict()[model.input_conv_key].shape[2:] == (3, 3, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 4, 8, 12, 6)).shape == (1, 3, 8, 12, 6)
    with pytest.raises(ModelInputError):
        model(torch.randn(1, 4, 8, 12, 5))


def test_reset_head_changes_outputs_and_config():
    model = build_model(tiny())
    model.reset_head(5)
    assert model.config.out_channels == 5
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 16, 16, 16)).shape == (1, 5, 16, 16, 16)
    head_keys = [k for k in model.state_dict() if k.startswith(model.head_prefixes)]
    assert len(head_keys) == 2 * 3  # weight + bias for each of the 3 decoder scales
    assert all(model.state_dict()[k].shape[0] == 5 for k in head_keys)


def test_forward_features_are_the_skips():
    model = build_model(tiny()).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 4, 16, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(1, 4, 16, 16, 16), (1, 8, 8, 8, 8),
                                               (1, 16, 4, 4, 4), (1, 16, 2, 2, 2)]


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_model(tiny())
    ckpt = build_model(tiny(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 16, 16, 16)
    outs = []
    for m in (plain, ckpt):
        m.train()
        loss = sum(o.square().mean() for o in m(x))
        loss.backward()
        outs.append((loss.item(), m.encoder.stages[0].convs[0].conv.weight.grad.clone()))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)


MONAI_CONFIGS = [
    ModelConfig(arch="segresnet", base_width=8, blocks_down=(1, 1, 1), blocks_up=(1, 1)),
    ModelConfig(arch="swinunetr", base_width=12, swin_depths=(1, 1, 1, 1),
                swin_heads=(1, 1, 1, 1)),
]


@pytest.mark.parametrize("cfg", MONAI_CONFIGS, ids=lambda c: c.arch)
def test_monai_wrappers_share_the_interface(cfg):
    model = build_model(cfg)
    size = 64 if cfg.arch == "swinunetr" else 16
    x = torch.randn(1, 4, size, size, size)
    model.train()  # no deep supervision: one tensor even in training
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, size, size, size)
    sd = model.state_dict()
    assert sd[model.input_conv_key].shape[:2] == (cfg.base_width, 4)
    assert any(k.startswith(model.head_prefixes) for k in sd)
    with pytest.raises(ModelInputError):
        model(torch.randn(1, 4, size + model.divisor // 2, size, size))
    model.reset_head(2)
    assert model.config.out_channels == 2
    heads = [v for k, v in model.state_dict().items() if k.startswith(model.head_prefixes)]
    assert heads and all(v.shape[0] == 2 for v in heads)
    if cfg.arch == "segresnet":
        with torch.no_grad():
            assert model.eval()(x).shape[1] == 2


@pytest.mark.parametrize("cfg", [tiny(), *MONAI_CONFIGS], ids=lambda c: c.arch)
def test_stage_groups_cover_every_parameter_once(cfg):
    model = build_model(cfg)
    groups = model.stage_groups()
    for name, _ in model.named_parameters():
        hits = [i for i, g in enumerate(groups) if name.startswith(g)]
        assert len(hits) == 1, (name, hits)
    assert groups[-1] == model.head_prefixes


def test_config_dict_round_trip_and_unknown_keys():
    cfg = tiny(strides=((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)))
    data = cfg.to_dict()
    assert data["strides"][1] == [2, 2, 1]
    assert ModelConfig.from_dict(data) == cfg
    with pytest.raises(ModelConfigError, match="widht"):
        ModelConfig.from_dict({**data, "widht": 3})


def test_registry_unknown_arch_and_custom_backbone():
    with pytest.raises(ModelConfigError, match="unknown model architecture 'nope'"):
        build_model(ModelConfig(arch="nope"))

    class Identity(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.config = cfg

    register_model("test-identity", Identity, overwrite=True)
    assert isinstance(build_model(ModelConfig(arch="test-identity")), Identity)
    with pytest.raises(ModelConfigError, match="already registered"):
        register_model("unet3d", Identity)


def test_presets():
    assert preset("small").patch_size == (64, 64, 64)
    assert preset("full").n_stages == 6
    assert preset("small", base_width=8).base_width == 8
    with pytest.raises(ModelConfigError, match="unknown model preset"):
        preset("huge")


def test_patch_size_must_fit_the_network():
    with pytest.raises(ModelConfigError, match="patch_size"):
        build_model(tiny(patch_size=(32, 32, 20)))

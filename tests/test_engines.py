"""Engines and export: ONNX / OpenVINO outputs match PyTorch's on random patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glioseg.infer.engines import EngineError, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from glioseg.infer.export import PARITY_ATOL, ExportError, engine_for_file, export_model, parity
from glioseg.infer.sliding_window import sliding_window_inference
from glioseg.model.registry import build_model, preset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("small", base_width=4, max_width=16, n_stages=3)).eval()


@pytest.fixture(scope="module")
def onnx_file(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(net, tmp_path_factory.mktemp("onnx") / "model.onnx", "onnx",
                        example_size=(16, 16, 16))


def _reference(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("size", [(16, 16, 16), (24, 8, 12)])
def test_onnx_parity_dynamic_sizes(net: torch.nn.Module, onnx_file: Path, size) -> None:
    engine = OnnxRuntimeEngine(onnx_file, threads=1)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 4, *size), dtype=np.float32))
    got = engine(x)
    ref = _reference(net, x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=PARITY_ATOL)


def test_openvino_parity(net: torch.nn.Module, tmp_path: Path) -> None:
    xml = export_model(net, tmp_path / "ir" / "model", "openvino", example_size=(16, 16, 16))
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    assert not [p for p in xml.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    engine = engine_for_file(xml, threads=1)
    assert isinstance(engine, OpenVinoEngine)
    for size in ((16, 16, 16), (8, 24, 16)):
        assert parity(net, engine, size=size, seed=2) < PARITY_ATOL


def test_sliding_window_same_through_engines(net: torch.nn.Module, onnx_file: Path) -> None:
    x = torch.randn(4, 30, 20, 18)
    ref = sliding_window_inference(x, TorchEngine(net, channels_last=False), (16, 16, 16),
                                   batch_size=2, divisor=4)
    for engine in (TorchEngine(net, channels_last=True), OnnxRuntimeEngine(onnx_file, threads=1),
                   OpenVinoEngine(onnx_file, threads=1)):
        got = sliding_window_inference(x, engine, (16, 16, 16), batch_size=2, divisor=4)
        torch.testing.assert_close(got, ref, rtol=0, atol=PARITY_ATOL)


def test_bf16_autocast_close_to_fp32(net: torch.nn.Module) -> None:
    x = torch.randn(1, 4, 16, 16, 16)
    got = TorchEngine(net, dtype="bf16")(x).float()
    ref = _reference(net, x)
    # bf16 keeps 8 mantissa bits: relative error ~1e-2 of the logit scale
    assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05


def test_engine_errors(net: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="fp16"):
        TorchEngine(net, dtype="fp16")
    with pytest.raises(EngineError, match="not found"):
        OnnxRuntimeEngine(tmp_path / "absent.onnx")
    with pytest.raises(ExportError, match="format"):
        export_model(net, tmp_path / "m", "tflite")


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_command(net: torch.nn.Module, tmp_path: Path, fmt: str) -> None:
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.model.card import ModelCard, save_model

    ckpt = save_model(tmp_path / "ckpt", net, ModelCard.for_model(net))
    target = tmp_path / "exported" / ("m.onnx" if fmt == "onnx" else "m.xml")
    result = CliRunner().invoke(app, ["export", "--model", str(ckpt), "--format", fmt,
                                      "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "max |logit difference|" in result.output and target.is_file()
    assert target.stat().st_mode & 0o044  # readable beyond the owner (umask permitting)
    got = engine_for_file(target, threads=1)(torch.ones(1, 4, 8, 16, 8))
    torch.testing.assert_close(got, _reference(net, torch.ones(1, 4, 8, 16, 8)), rtol=0,
                               atol=PARITY_ATOL)


def _mean_filter_net() -> torch.nn.Module:
    """Region k = 3x3x3 mean of input channel k > 0.5 (logit = mean - 0.5), by construction."""
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.LeakyReLU(0.01),
                              torch.nn.Conv3d(4, 3, 1))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()
        for c in range(4):
            net[0].weight[c, c] = 1.0 / 27.0
        net[2].weight.zero_()
        for k in range(3):
            net[2].weight[k, k] = 1.0
        net[2].bias.fill_(-0.5)
    return net.eval()


def _nested_spheres(centre: tuple[int, int, int], seed: int) -> np.ndarray:
    """``(4, 32, 32, 32)`` float32: channels 0-2 balls of radius 11, 8, 5 (1 inside), noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices((32, 32, 32))
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    x = rng.normal(0.0, 0.05, (4, 32, 32, 32)).astype(np.float32)
    for k, radius in enumerate((11, 8, 5)):
        x[k] += (r2 <= radius**2).astype(np.float32)
    return x


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


INT8_MIN_DICE = 0.98
"""Per-region Dice of int8 labels vs fp32 labels accepted on the easy nested-spheres input."""


def test_int8_engines_agree_with_fp32_labels(tmp_path: Path) -> None:
    from scipy.ndimage import uniform_filter

    from glioseg.infer.export import calibration_windows, export_int8

    net = _mean_filter_net()
    x = _nested_spheres((15, 16, 17), seed=0)
    # independent reference: scipy's mean filter (zeros outside, as the convolution's padding)
    truth = np.stack([uniform_filter(x[k], 3, mode="constant") > 0.5 for k in range(3)])
    # calibrated on another volume (other centre, other noise): never the predicted input
    windows = calibration_windows(_nested_spheres((18, 14, 16), seed=1), (24, 24, 24), n=4)
    assert windows.shape == (4, 4, 24, 24, 24)
    path = export_int8(net, tmp_path / "int8.onnx", windows)
    assert not [p for p in tmp_path.iterdir() if p.name != "int8.onnx"]  # no fp32 file left
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32_path = export_model(net, tmp_path / "fp32.onnx", "onnx", example_size=(32, 32, 32))
    fp32 = OnnxRuntimeEngine(fp32_path, threads=1)
    with pytest.raises(EngineError, match="no quantisation"):  # never f32 under the name int8
        OpenVinoEngine(fp32_path, precision="int8", threads=1)
    ref = fp32(torch.from_numpy(x[None]))[0].numpy() > 0
    assert all(_dice(ref[k], truth[k]) > 0.999 for k in range(3))
    ov = OpenVinoEngine(path, precision="int8", threads=1)
    for engine in (OnnxRuntimeEngine(path, threads=1), ov):
        got = engine(torch.from_numpy(x[None]))[0].numpy() > 0
        for k in range(3):
            assert _dice(got[k], ref[k]) >= INT8_MIN_DICE, (type(engine).__name__, k)
    # OpenVINO really executes integer convolutions (not dequantised f32 weights)
    runtime = next(iter(ov._compiled.values())).get_runtime_model()
    infos = [op.get_rt_info() for op in runtime.get_ops()]
    conv = {i["runtimePrecision"].astype(str) for i in infos
            if "layerType" in i and i["layerType"].astype(str) == "Convolution"}
    assert conv == {"u8"}, conv


def test_calibration_windows(tmp_path: Path) -> None:
    from glioseg.infer.export import calibration_windows, quantize_onnx

    vol = np.arange(4 * 10 * 6 * 8, dtype=np.float32).reshape(4, 10, 6, 8)
    w = calibration_windows(vol, (4, 8, 8), n=5, seed=3)
    assert w.shape == (5, 4, 4, 8, 8)
    # each window is a block of the volume, zero-padded where the ROI is larger (y: 6 < 8)
    for win in w:
        i = int(np.argwhere(vol[0] == win[0, 0, 0, 0])[0][0])
        np.testing.assert_array_equal(win[:, :, :6], vol[:, i:i + 4])
        assert not win[:, :, 6:].any()
    np.testing.assert_array_equal(w, calibration_windows(vol, (4, 8, 8), n=5, seed=3))
    with pytest.raises(ExportError, match="not found"):
        quantize_onnx(tmp_path / "absent.onnx", tmp_path / "q.onnx", w)
    with pytest.raises(EngineError, match="precision"):
        OpenVinoEngine(tmp_path / "absent.onnx", precision="fp16")

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

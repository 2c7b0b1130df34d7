"""Export: a file that fails its parity check never appears under the asked name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import glioseg.infer.export as export
from glioseg.model.registry import build_model, preset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glioseg.model.card import ModelCard, save_model

    torch.manual_seed(0)
    net = build_model(preset("small", base_width=4, max_width=16, n_stages=3)).eval()
    return save_model(tmp_path_factory.mktemp("ckpt") / "m", net, ModelCard.for_model(net))


def _broken_exporter(monkeypatch) -> list[Path]:
    """Make every exported file's logits differ from PyTorch's by 0.5 (a faulty exporter)."""
    seen: list[Path] = []
    real = export.engine_for_file

    def engine_for_file(path, *args, **kw):
        seen.append(Path(path))
        engine = real(path, *args, **kw)
        return lambda x: engine(x) + 0.5

    monkeypatch.setattr(export, "engine_for_file", engine_for_file)
    return seen


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("openvino", "m.xml")])
def test_export_failing_parity_leaves_no_file(ckpt: Path, tmp_path: Path, monkeypatch,
                                              fmt: str, name: str) -> None:
    from glioseg.cli import app

    seen = _broken_exporter(monkeypatch)
    out = tmp_path / "exported"
    out.mkdir()
    old = out / "old.onnx"
    old.write_bytes(b"an older export")
    for target in (out / name, old if fmt == "onnx" else out / "old.xml"):
        result = CliRunner().invoke(app, ["export", "--model", str(ckpt), "--format", fmt,
                                          "-o", str(target)])
        assert result.exit_code == 1, result.output
        assert "differ" in result.output
    assert seen and all(p.name.startswith(".") or p.parent != out for p in seen)  # temporaries
    # nothing written, nothing left behind, the older export untouched
    assert sorted(p.name for p in out.iterdir()) == ["old.onnx"]
    assert old.read_bytes() == b"an older export"


def test_export_checked_passes_and_returns_the_difference(ckpt: Path, tmp_path: Path) -> None:
    from glioseg.infer.predict import load_model

    net, _ = load_model(ckpt)
    path, diff = export.export_checked(net, tmp_path / "m.onnx", "onnx",
                                       example_size=(16, 16, 16), size=(16, 16, 16))
    assert path == tmp_path / "m.onnx" and path.is_file()
    assert 0 <= diff <= export.PARITY_ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

"""``glioseg bench predict``: the MONAI reference is timed warm, as the engines are; ``--device``.

A network whose first forward pass sleeps (as a first call that creates primitives or compiles
does) shows what each timer includes: a row timed cold would count the sleep. Only the CPU path
runs here; ``--device cuda`` without a GPU must be a one-line error, not a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glioseg.bench.predict import bench_predict, engine_run, reference_run
from glioseg.cli import app
from glioseg.model.card import ModelCard, save_model
from glioseg.model.registry import ModelConfig, build_model, register_model

torch.set_num_threads(1)

ARCH = "slow-first-call-test"
FIRST_CALL_S = 0.6


class SlowFirstCall(torch.nn.Module):
    """A 1x1x1 convolution whose first forward pass (per instance) sleeps ``FIRST_CALL_S``."""

    divisor = 1

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.conv = torch.nn.Conv3d(cfg.in_channels, cfg.out_channels, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            time.sleep(FIRST_CALL_S)
        return self.conv(x)


register_model(ARCH, SlowFirstCall, overwrite=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, ``(4, 20, 18, 12)`` image ``.npy`` with a box brain and a bright blob)."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch=ARCH, patch_size=(8, 8, 8)))
    ckpt = save_model(root / "model", net, ModelCard.for_model(net, label_scheme="brats2021"))
    image = np.zeros((4, 20, 18, 12), np.float32)
    image[:, 2:18, 2:16, 1:11] = 1.0
    image[:, 6:12, 6:12, 3:8] = 3.0
    np.save(root / "image.npy", image)
    return ckpt, root / "image.npy"


def test_the_slow_first_call_is_real(case: tuple[Path, Path]) -> None:
    from glioseg.infer.predict import load_model

    net, _ = load_model(case[0])
    t0 = time.perf_counter()
    net(torch.zeros(1, 4, 8, 8, 8))
    assert time.perf_counter() - t0 >= FIRST_CALL_S


def test_reference_and_engine_are_timed_after_one_warm_up_window(
        case: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, image = case
    ref = reference_run(str(ckpt), str(image), [1.0, 1.0, 1.0], (8, 8, 8), 0.5,
                         str(tmp_path / "ref.npy"), str(tmp_path / "crop.npy"), "cpu")
    ours = engine_run("torch:fp32", str(ckpt), str(image), [1.0, 1.0, 1.0], (8, 8, 8), 0.5, 1,
                       str(tmp_path / "ours.npy"), device="cpu")
    # both timers start after the first (slow) call: a cold reference would count the sleep
    assert 0 < ref["seconds"] < FIRST_CALL_S
    assert 0 < ours["seconds"] < FIRST_CALL_S and ours["setup_s"] >= FIRST_CALL_S
    assert "peak_gpu_mb" not in ref and "peak_gpu_mb" not in ours  # CPU rows
    # both ran the case: a pointwise network on the same box gives the same regions
    np.testing.assert_array_equal(np.load(tmp_path / "ours.npy"), np.load(tmp_path / "crop.npy"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["bench", "predict", "--device", "cuda"])
    assert result.exit_code == 1
    assert "--device cuda" in result.output and "no CUDA GPU" in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert time.perf_counter() - t0 < 10  # refused before any model or case is built
    with pytest.raises(ValueError, match="cpu or cuda, got 'tpu'"):
        bench_predict(device="tpu")


def test_cli_passes_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import glioseg.bench.predict as B

    seen: dict = {}
    monkeypatch.setattr(B, "bench_predict", lambda **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["bench", "predict", "--device", "cpu", "--engines",
                                      "torch:fp32, torch:bf16", "--no-reference"])
    assert result.exit_code == 0, result.output
    assert seen["device"] == "cpu" and seen["engines"] == ["torch:fp32", "torch:bf16"]
    assert seen["reference"] is False

"""The figures behind ``glioseg bench predict``: window counts, FLOPs, Dice, the printed table.

Window counts are checked against the windows MONAI's and our sliding windows actually run
(a counting network), FLOPs against a hand count for one convolution, Dice against a hand
count; one small end-to-end run checks every figure the issue asks for is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import tiny_brats2021_case
from monai.inferers import sliding_window_inference as monai_swi

from glioseg.bench.predict import (
    crop_windows,
    monai_windows,
    region_dice,
    window_flops,
)
from glioseg.infer.sliding_window import sliding_window_inference

torch.set_num_threads(1)


def _counting() -> tuple[list[int], object]:
    calls: list[int] = []

    def net(w: torch.Tensor) -> torch.Tensor:
        calls.append(int(w.shape[0]))
        return w[:, :1] * 0.0

    return calls, net


@pytest.mark.parametrize(("shape", "roi", "overlap"), [
    ((120, 120, 78), (48, 48, 48), 0.5),
    ((37, 20, 16), (16, 16, 16), 0.25),
    ((10, 33, 16), (16, 16, 16), 0.5),  # one side smaller than the window (MONAI pads)
])
def test_window_counts_match_what_runs(shape, roi, overlap) -> None:
    calls, net = _counting()
    x = torch.zeros((1, 1, *shape))
    monai_swi(x, roi, 1, net, overlap=overlap, mode="gaussian")
    assert monai_windows(shape, roi, overlap) == sum(calls)
    calls.clear()
    sliding_window_inference(x[0], net, roi, overlap=overlap, divisor=8)
    assert crop_windows(shape, roi, overlap, 8) == sum(calls)


def test_window_flops_by_hand() -> None:
    conv = torch.nn.Conv3d(4, 6, 3, padding=1)
    # one multiply-add per input channel, kernel tap, output channel and output voxel
    assert window_flops(conv, 4, (8, 10, 6)) == 2 * 4 * 27 * 6 * (8 * 10 * 6)


def test_window_flops_of_the_unet_counted_without_running_it_match_a_run() -> None:
    """The count is taken on the meta device (shapes only); it equals the count of a real
    forward pass on the CPU, and a model the meta device cannot run is counted on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from glioseg.model.registry import build_model, preset

    net = build_model(preset("small")).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros((1, 4, 32, 32, 32)))
    assert window_flops(net, 4, (32, 32, 32)) == counter.get_total_flops() > 0

    class HostOnly(torch.nn.Conv3d):  # an operation only a real tensor can do
        def forward(self, x):
            return super().forward(x) * float(x.sum() >= 0)

    conv = HostOnly(4, 6, 3, padding=1)
    assert window_flops(conv, 4, (8, 10, 6)) == 2 * 4 * 27 * 6 * (8 * 10 * 6)


def test_region_dice_by_hand() -> None:
    a = np.zeros((3, 5, 3, 1), bool)
    b = np.zeros((3, 5, 3, 1), bool)
    a[0, :3] = True  # WT: 9 voxels vs 6, 6 shared -> 12 / 15
    b[0, 1:3] = True
    a[1, 0, 0] = True  # TC: disjoint -> 0
    b[1, 4, 2] = True
    # ET: both empty -> 1
    got = region_dice(np.packbits(a), np.packbits(b), 15)
    assert got == {"WT": 0.8, "TC": 0.0, "ET": 1.0}


def _tiny_model(tmp_path: Path) -> Path:
    from glioseg.model.card import ModelCard, save_model
    from glioseg.model.registry import build_model, preset

    torch.manual_seed(0)
    net = build_model(preset("small", base_width=4, max_width=8, n_stages=2,
                             patch_size=(16, 16, 16)))
    return save_model(tmp_path / "m", net, ModelCard.for_model(net, label_scheme="brats2021"))


def test_bench_predict_reports_every_figure(tmp_path: Path, capsys) -> None:
    from glioseg.bench.predict import bench_predict

    ckpt = _tiny_model(tmp_path)
    folder = tiny_brats2021_case(tmp_path / "data", "BraTS2021_00001", seed=0)
    out = tmp_path / "bench.json"
    bench_predict(model=ckpt, engines=["torch:fp32"], case_dir=folder, output=out)
    printed = capsys.readouterr().out
    for heading in ("s/case", "x MONAI", "floor s", "peak MB", "GFLOP/s", "vs reference"):
        assert heading in printed
    result = json.loads(out.read_text())
    ref, ours = result["rows"]
    assert ref["spec"].startswith("monai-reference") and ours["spec"] == "torch:fp32"
    for row in (ref, ours):
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["floor_s"] == pytest.approx(row["flops"] / (result["gflops"]["fp32"] * 1e9))
    assert ours["speedup"] == pytest.approx(ref["seconds"] / ours["seconds"])
    assert set(ours["dice"]) == {"WT", "TC", "ET"} and set(ours["dice_truth"]) == {"WT", "TC", "ET"}
    # brain box 26 x 22 x 16: 3 x 2 x 1 windows of 16 at overlap 0.5 (26: 0, 5, 10; 22: 0, 6)
    assert result["brain_box"] == [26, 22, 16] and ours["windows"] == 3 * 2 * 1


def test_bench_int8_rows_compare_with_fp32(tmp_path: Path, capsys) -> None:
    from glioseg.bench.predict import bench_predict

    ckpt = _tiny_model(tmp_path)
    folder = tiny_brats2021_case(tmp_path / "data", "BraTS2021_00001", seed=0)
    calib = tiny_brats2021_case(tmp_path / "calib", "BraTS2021_00002", seed=1)
    with pytest.raises(ValueError, match="benchmarked case"):
        bench_predict(model=ckpt, engines=["onnxruntime:int8"], case_dir=folder,
                      reference=False, calibration=folder)
    out = tmp_path / "bench.json"
    bench_predict(model=ckpt, engines=["onnxruntime:fp32", "onnxruntime:int8"], case_dir=folder,
                  reference=False, calibration=calib, output=out)
    assert "vs same engine fp32" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["calibration_case"] == "BraTS2021_00002"
    fp32, int8 = result["rows"]
    assert (fp32["spec"], int8["spec"]) == ("onnxruntime:fp32", "onnxruntime:int8")
    assert "dice_fp32" not in fp32 and set(int8["dice_fp32"]) == {"WT", "TC", "ET"}
    assert all(0.0 <= d <= 1.0 for d in int8["dice_fp32"].values())
    assert int8["seconds"] > 0 and int8["calibration_case"] == "BraTS2021_00002"


def test_default_engines_time_bf16_only_where_native():
    from glioseg.bench.predict import default_engines

    assert default_engines(False) == ["torch:fp32", "onnxruntime:fp32", "openvino:fp32",
                                      "onnxruntime:int8", "openvino:int8"]
    assert default_engines(True) == ["torch:fp32", "torch:bf16", "onnxruntime:fp32",
                                     "openvino:fp32", "openvino:bf16", "onnxruntime:int8",
                                     "openvino:int8"]


def test_rows_name_their_mode_and_resolved_precision(tmp_path: Path, capsys) -> None:
    from glioseg.bench.predict import bench_predict
    from glioseg.bench.predict_runs import parse_spec
    from glioseg.infer.device import resolve_dtype

    assert parse_spec("torch") == ("torch", "fp32", "sliding")
    assert parse_spec("torch:bf16:whole") == ("torch", "bf16", "whole")
    with pytest.raises(ValueError, match="mode must be one of sliding, whole"):
        bench_predict(engines=["torch:fp32:tiles"])
    ckpt = _tiny_model(tmp_path)
    folder = tiny_brats2021_case(tmp_path / "data", "BraTS2021_00001", seed=0)
    result = bench_predict(model=ckpt, engines=["torch:fp32:whole", "torch:auto:whole"],
                           case_dir=folder, reference=False)
    printed = capsys.readouterr().out
    whole, auto = result["rows"]
    assert (whole["mode"], whole["windows"], whole["dtype"]) == ("whole", 1, "fp32")
    assert auto["dtype"] == resolve_dtype("auto", "torch", "cpu")
    assert set(whole["stages"]) == {"prepare", "network", "labels", "host"}
    assert "torch:fp32:whole done: " in printed
    if auto["dtype"] == "bf16":  # a half row is checked against the fp32 row of its mode
        assert set(auto["dice_fp32"]) == {"WT", "TC", "ET"}
        assert "vs the same engine and mode in fp32: min Dice" in printed

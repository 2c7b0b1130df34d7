"""Smoke tests of ``glioseg bench train`` and ``glioseg bench data`` on tiny sizes: every figure
is there, printed, and consistent with the others and with what the config says.

The figures are timings, so they are not compared with fixed values; what is checked is how
they relate: voxels/s = patches/s x voxels per patch, patches/s = steps/s x patches per step
(summed over ranks), the scaling efficiency = throughput(N) / (N x throughput(1)) of the
returned rows, fractions in [0, 1], and the MONAI row beside ours.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fit import SIZE, _tiny_cache

# a tiny model on 16^3 patches: the benchmark's code path, not its sizes
TINY = ["model.base_width=4", "model.n_stages=2", "model.max_width=8",
        f"data.patch_size=[{SIZE},{SIZE},{SIZE}]", "data.batch_size=2", "data.workers=0",
        "data.augment=false", "train.threads=1", "train.channels_last=false"]
VOXELS = SIZE ** 3


def _params() -> int:
    """Parameters of the tiny model, counted here from the config."""
    from glioseg.model.registry import build_model
    from glioseg.train import config as C

    return sum(p.numel() for p in build_model(C.load_config("small", TINY).model).parameters())


def _check_row(row: dict, world: int, params: int) -> None:
    assert row["world_size"] == world and row["amp"] == "none" and row["device"] == "cpu"
    assert row["patch"] == [SIZE] * 3 and row["batch"] == 2 and row["threads"] == 1
    assert row["params"] == params
    for key in ("steps_per_s", "patches_per_s", "voxels_per_s", "cpu_s_per_step",
                "peak_rss_mb"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["cuda_max_allocated_mb"] == 0.0
    assert 0.0 <= row["data_wait"] <= 1.0
    assert row["voxels_per_s"] == pytest.approx(row["patches_per_s"] * VOXELS, rel=1e-9)
    # patches/s is summed over ranks of (patches / own time), steps/s uses the mean time: the
    # ranks run in lock step (gradient all-reduce), so the two agree to their timing skew
    per_step = row["batch"] * world
    assert row["patches_per_s"] == pytest.approx(row["steps_per_s"] * per_step, rel=0.1)


def test_bench_train_rows_and_scaling_efficiency(tmp_path: Path, capfd):
    """``bench train --nproc 2 --cache``: one- and two-process rows (torchrun, gloo), each with
    synthetic batches and the real loader; the printed efficiency is the returned ratio."""
    from glioseg.bench.train import bench_train

    cache = _tiny_cache(tmp_path / "cache", n=2)
    rows = bench_train("small", TINY, amps=("none",), steps=3, warmup=1, cache=str(cache),
                       nproc=2)
    printed = capfd.readouterr().out
    assert [(r["world_size"], r["source"]) for r in rows] == [
        (1, "synthetic"), (1, "loader"), (2, "synthetic"), (2, "loader")]
    params = _params()
    for r in rows:
        _check_row(r, r["world_size"], params)
    for src in ("synthetic", "loader"):
        one = next(r for r in rows if r["world_size"] == 1 and r["source"] == src)
        two = next(r for r in rows if r["world_size"] == 2 and r["source"] == src)
        assert "scaling_efficiency" not in one
        eff = two["patches_per_s"] / (2 * one["patches_per_s"])
        assert two["scaling_efficiency"] == pytest.approx(eff, rel=1e-12)
        assert f"scaling efficiency none {src}: {eff:.2f}" in printed
        assert (f"({two['patches_per_s']:.2f} / (2 x {one['patches_per_s']:.2f}) patches/s)"
                in printed)
    # the table: a header, then one line per row with its figures as printed
    assert re.search(r"procs .*steps/s .*patches/s .*Mvox/s .*wait .*RSS MB", printed)
    for r in rows:
        line = next(x for x in printed.splitlines()
                    if re.match(rf"\s+{r['world_size']}\s+1\s+cpu\s+none\s+{r['source']}\s", x))
        fields = line.split()
        assert float(fields[5]) == pytest.approx(r["steps_per_s"], abs=6e-4)
        assert float(fields[6]) == pytest.approx(r["patches_per_s"], abs=6e-3)
        assert float(fields[7]) == pytest.approx(r["voxels_per_s"] / 1e6, abs=6e-3)
        assert fields[8] == f"{r['data_wait']:.1%}"


def test_bench_train_one_process_in_place(capsys):
    """Plain ``bench train`` (no ``--nproc``): this process, synthetic batches, both figures of
    throughput per precision asked for, no efficiency line."""
    from glioseg.bench.train import bench_train

    rows = bench_train("small", TINY, amps=("none",), steps=2, warmup=1)
    printed = capsys.readouterr().out
    assert len(rows) == 1 and rows[0]["source"] == "synthetic"
    _check_row(rows[0], 1, _params())
    assert "scaling efficiency" not in printed
    with pytest.raises(ValueError, match="steps"):
        bench_train("small", TINY, amps=("none",), steps=0)


def test_bench_data_ours_beside_monai(tmp_path: Path, capsys):
    """``bench data``: patches/s of ours and of the MONAI pipeline, the ratio between them, and
    the MONAI pipeline's batches shaped as ours (4 channels in, nested WT > TC > ET regions)."""
    from glioseg.bench.data import bench_data, monai_loader
    from glioseg.preprocess.cache import open_cache

    cache = _tiny_cache(tmp_path / "cache", n=3)
    out = bench_data(cache, (SIZE,) * 3, batch_size=2, batches=3, warmup=1, num_workers=0)
    printed = capsys.readouterr().out
    assert out["cases"] == 3 and out["patch_size"] == [SIZE] * 3
    assert out["batch_size"] == 2 and out["num_workers"] == 0
    for key in ("ours_patches_per_s", "monai_patches_per_s"):
        assert math.isfinite(out[key]) and out[key] > 0
    assert out["ratio"] == pytest.approx(out["ours_patches_per_s"] / out["monai_patches_per_s"],
                                         rel=1e-12)
    rows = {x.split()[0]: x.split()[1] for x in printed.splitlines()
            if x.startswith(("ours ", "MONAI ", "ratio "))}
    assert float(rows["ours"]) == pytest.approx(out["ours_patches_per_s"], abs=6e-3)
    assert float(rows["MONAI"]) == pytest.approx(out["monai_patches_per_s"], abs=6e-3)
    assert rows["ratio"] == f"{out['ratio']:.2f}x"
    assert f"cases 3, patch {(SIZE,) * 3}, batch 2, workers 0, 3 batches after 1" in printed

    batch = next(iter(monai_loader(open_cache(cache), (SIZE,) * 3, 2, 0, seed=0)))
    image, regions = batch["image"], batch["label"]
    assert tuple(image.shape) == (2, 4, SIZE, SIZE, SIZE) and image.dtype == torch.float32
    assert tuple(regions.shape) == (2, 3, SIZE, SIZE, SIZE)
    r = regions.numpy().astype(bool)
    assert set(np.unique(regions.numpy())) <= {0.0, 1.0}
    assert not (r[:, 1] & ~r[:, 0]).any() and not (r[:, 2] & ~r[:, 1]).any()


def test_bench_data_monai_reads_cached_indices(tmp_path: Path, monkeypatch):
    """The MONAI baseline is written as a MONAI user would: foreground / background indices
    are computed once per case (``FgBgToIndicesd``, cached by ``CacheDataset``) and the crop
    reads them; its own per-sample label scan is never reached."""
    import monai.transforms.croppad.array as crop_array
    import monai.transforms.utility.array as utility_array

    from glioseg.bench.data import monai_loader
    from glioseg.preprocess.cache import open_cache

    cache = _tiny_cache(tmp_path / "cache", n=3)
    scans = []
    real = utility_array.map_binary_to_indices

    def counted(*args, **kwargs):
        scans.append(1)
        return real(*args, **kwargs)

    def rescan(*args, **kwargs):
        raise AssertionError("RandCropByPosNegLabeld rescanned a label volume")

    monkeypatch.setattr(utility_array, "map_binary_to_indices", counted)
    monkeypatch.setattr(crop_array, "map_binary_to_indices", rescan)
    it = iter(monai_loader(open_cache(cache), (SIZE,) * 3, 2, 0, seed=0))
    for _ in range(5):
        batch = next(it)
    assert tuple(batch["image"].shape) == (2, 4, SIZE, SIZE, SIZE)
    assert set(batch) == {"image", "label"}  # the index arrays do not reach the batch
    assert len(scans) == 3  # once per case, when the dataset is cached


def test_bench_train_prints_each_row_as_it_is_measured(monkeypatch, capsys):
    """A bench cut short (a time limit on a lent GPU) keeps the rows it finished: each is
    printed when measured, not all at the end."""
    import glioseg.bench.train as BT

    real, calls = BT.measure, []

    def measure_then_stop(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # what a time limit's signal does to the second row
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(BT, "measure", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        BT.bench_train("small", TINY, amps=("none", "bf16"), steps=1, warmup=0)
    printed = capsys.readouterr().out
    assert re.search(r"procs .*patches/s", printed)
    assert re.search(r"\s1\s+\d+\s+cpu\s+none\s+synthetic\s", printed)


def test_bench_train_prints_the_reference_loop_beside_ours(capsys):
    """``bench train --reference``: the reference loop's rows (nnU-Net's PlainConvUNet and
    MONAI's DynUNet with our topology, in this CPU's auto precision) follow ours in the same
    run, with our best synthetic row's ratio to the best of them; the device choice is printed."""
    from glioseg.bench.train import bench_train
    from glioseg.train.loop import resolve_amp

    sets = [*TINY, "model.n_stages=3"]
    rows = bench_train("small", sets, amps=("none",), steps=1, warmup=1, device="cpu",
                       reference=True)
    printed = capsys.readouterr().out
    ours = [r for r in rows if r["source"] == "synthetic"]
    refs = [r for r in rows if r["source"] == "reference"]
    amp = resolve_amp("auto", torch.device("cpu"))
    assert [r["name"] for r in refs] == [f"nnunet-plainconv {amp}", f"monai-dynunet {amp}"]
    for r in refs:
        assert "error" not in r, r
        assert r["patch"] == [SIZE] * 3 and r["batch"] == 2 and r["patches_per_s"] > 0
        assert re.search(rf"{r['name']}\s+{r['patches_per_s']:.2f}\s", printed)
    best = max(refs, key=lambda r: r["patches_per_s"])
    ratio = ours[0]["ratio_to_best_reference"]
    assert ratio == pytest.approx(ours[0]["patches_per_s"] / best["patches_per_s"], rel=1e-12)
    assert f"best reference {best['name']} ({best['patches_per_s']:.2f}): {ratio:.2f}x" in printed
    assert "device cpu: amp none (as set)" in printed
    assert not ours[0]["channels_last"] and not ours[0]["compile"]
    assert ours[0]["skipped_steps"] == 0


def test_bench_data_workers_needed(tmp_path: Path, capsys):
    """``bench data --device``: one worker's batches/s on each augmentation path and the
    workers a step of the given (or measured) rate needs: ceil(steps/s / batches/s)."""
    from glioseg.bench.data import workers_needed
    from glioseg.preprocess.cache import open_cache

    cases = open_cache(_tiny_cache(tmp_path / "cache", n=2))
    out = workers_needed(cases, (SIZE,) * 3, 2, "cpu", step_rate=500.0, batches=3, warmup=1)
    printed = capsys.readouterr().out
    assert out["step_rate"] == 500.0 and out["step_rate_source"] == "given"
    for path in ("worker", "device"):
        rate = out[f"{path}_batches_per_s_per_worker"]
        assert rate > 0 and out[f"{path}_workers_needed"] == math.ceil(500.0 / rate)
        assert f"{rate:7.2f} batches/s per worker" in printed
        assert f"-> {out[f'{path}_workers_needed']} workers" in printed
    measured = workers_needed(cases, (SIZE,) * 3, 2, "cpu", batches=2, warmup=1)
    assert measured["step_rate"] > 0 and measured["step_rate_source"].startswith("measured")


def test_bench_commands_take_the_device_options(tmp_path: Path):
    """``glioseg bench data --device cpu --step-rate R`` prints the workers needed;
    ``bench train`` offers --device and --reference/--no-reference."""
    from typer.testing import CliRunner

    from glioseg.cli import app

    cache = _tiny_cache(tmp_path / "cache", n=2)
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "data", str(cache), "--patch", str(SIZE), "--batches", "1",
                              "--warmup", "1", "--workers", "0", "--device", "cpu",
                              "--step-rate", "100"])
    assert res.exit_code == 0, res.output
    assert "to feed 100.00 steps/s (given)" in res.output
    assert res.output.count("batches/s per worker") == 2
    help_text = runner.invoke(app, ["bench", "train", "--help"]).output
    assert "--device" in help_text and "--no-reference" in help_text

"""``glioseg bench ...``: the benchmark commands, each printing its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glioseg.cli.common import bench_app, parse_roi, user_errors


@bench_app.command("cache")
@user_errors
def bench_cache_cmd(
    data_dir: Annotated[Path, typer.Argument(help="The data folder the cache was built from.")],
    cache_dir: Annotated[Path, typer.Argument(help="The cache folder (glioseg preprocess).")],
    repeats: Annotated[int, typer.Option(help="Passes per measurement (best kept).")] = 2,
) -> None:
    """Cases/s and MB/s reading the memory-mapped cache vs loading NIfTI; bytes per case."""
    from glioseg.bench.cache import bench_cache

    bench_cache(data_dir, cache_dir, repeats=repeats)


@bench_app.command("data")
@user_errors
def bench_data_cmd(
    cache_dir: Annotated[Path, typer.Argument(help="The cache folder (glioseg preprocess).")],
    patch: Annotated[int, typer.Option(help="Cubic patch side in voxels (small preset 48, "
                                       "full preset 128).")] = 48,
    batch_size: Annotated[int, typer.Option(help="Patches per batch.")] = 2,
    batches: Annotated[int, typer.Option(help="Batches timed (after warm-up).")] = 100,
    warmup: Annotated[int, typer.Option(help="Batches drawn before timing.")] = 3,
    workers: Annotated[int, typer.Option(help="Loader worker processes (both pipelines).")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str | None, typer.Option(
        help="Also print the loader workers a training step on this device (cpu, cuda) "
             "needs, for CPU and for device-side augmentation.")] = None,
    step_rate: Annotated[float | None, typer.Option(
        help="With --device: the steps/s to feed (default: measured, the --config step).")] = None,
    config: Annotated[str, typer.Option(
        "--config", help="With --device: preset or YAML whose step is measured.")] = "small",
) -> None:
    """Patches/s of our patch pipeline vs a plain MONAI pipeline doing the same work."""
    from glioseg.bench.data import bench_data

    bench_data(cache_dir, (patch,) * 3, batch_size=batch_size, batches=batches,
               warmup=warmup, num_workers=workers, seed=seed, device=device,
               step_rate=step_rate, config=config)


@bench_app.command("predict")
@user_errors
def bench_predict_cmd(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint (default: an "
                                               "untrained network of --preset).")] = None,
    preset: Annotated[str, typer.Option(help="Network preset when no --model: small or "
                                        "full.")] = "full",
    engines: Annotated[str | None, typer.Option(help="Comma list of engine:dtype[:mode] to "
                                                "time; dtype fp32, bf16, fp16, int8 or auto, "
                                                "mode sliding (default) or whole (the brain "
                                                "box in one forward), e.g. torch:fp16:whole "
                                                "(default: every engine in fp32 and int8, and "
                                                "bf16 where this CPU has it natively; on cuda "
                                                "torch fp32/fp16/bf16 and whole-box rows).")] = None,
    case: Annotated[Path | None, typer.Option(help="A case folder (default: a synthetic "
                                              "240x240x155 case).")] = None,
    overlap: Annotated[float, typer.Option(help="Window overlap (ours and MONAI's).")] = 0.5,
    roi: Annotated[str | None, typer.Option(help="Window size (default: model's patch).")] = None,
    batch: Annotated[int, typer.Option(help="Windows per network call (ours).")] = 1,
    reference: Annotated[bool, typer.Option(help="Run the MONAI reference.")] = True,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the figures as "
                                                "JSON here.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="Case folder int8 engines are "
                                                     "calibrated on, not the benchmarked case "
                                                     "(default: another synthetic case).")
                           ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda: where the torch engine and the "
                                        "MONAI reference run (cuda: rows torch:fp32, "
                                        "torch:fp16 and torch:bf16 autocast by default, the "
                                        "reference in fp32; peak GPU memory "
                                        "reported).")] = "cpu",
) -> None:
    """Seconds per full-size case per engine vs MONAI's sliding window; Dice agreement; floor.

    Engines: torch:fp32|bf16|fp16 (fp16: cuda), onnxruntime:fp32|int8,
    openvino:fp32|bf16|int8 (int8 and openvino: cpu).
    """
    from glioseg.bench.predict import bench_predict

    bench_predict(model=model, preset_name=preset,
                  engines=None if engines is None else
                  [e.strip() for e in engines.split(",") if e.strip()],
                  case_dir=case, overlap=overlap, roi=parse_roi(roi), batch=batch,
                  reference=reference, output=output, calibration=calibration,
                  device=device)


@bench_app.command("eval")
@user_errors
def bench_eval_cmd(
    repeats: Annotated[int, typer.Option(help="Timed repeats per scheme (median kept).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic case and prediction.")] = 0,
    specks: Annotated[int, typer.Option(help="Specks scattered over the grid in the noisy "
                                        "prediction (0: plausible prediction only).")] = 300,
) -> None:
    """Seconds to score one 240x240x155 case (all metrics, each scheme) on one core."""
    from glioseg.bench.evaluation import bench_eval

    bench_eval(repeats=repeats, seed=seed, n_specks=specks)


@bench_app.command("faults")
@user_errors
def bench_faults_cmd(
    stages: Annotated[str, typer.Option(help="Stages to kill, comma-separated.")] =
        "preprocess,train,predict,evaluate",
    moments: Annotated[str, typer.Option(help="Kill moments: early, middle, write.")] =
        "early,middle,write",
    work: Annotated[Path | None, typer.Option(help="Workspace to keep (default: a temporary "
                                              "folder, removed).")] = None,
) -> None:
    """SIGKILL each stage at several moments, re-run it, compare with an uninterrupted run."""
    from glioseg.bench.faults import bench_faults

    results = bench_faults([s.strip() for s in stages.split(",") if s.strip()],
                           [m.strip() for m in moments.split(",") if m.strip()], work=work)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@bench_app.command("train")
@user_errors
def bench_train_cmd(
    config: Annotated[str, typer.Option("--config", help="Preset or YAML: model and patch.")] = "small",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override (repeatable).")] = None,
    amp: Annotated[str, typer.Option(help="Comma list of precisions: auto, bf16, fp16, none.")] = "bf16,none",
    steps: Annotated[int, typer.Option(help="Timed steps.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 3,
    cache: Annotated[Path | None, typer.Option(help="Also time the real loader on this cache.")] = None,
    nproc: Annotated[int, typer.Option(help="Also run with N processes (torchrun); print the "
                                       "scaling efficiency.")] = 1,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda or auto (train.device; default: the config's).")] = None,
    reference: Annotated[bool | None, typer.Option(
        "--reference/--no-reference",
        help="Also time the reference loop (nnU-Net PlainConvUNet, MONAI DynUNet) and print "
             "the ratio to its best row (default: on a GPU).")] = None,
) -> None:
    """Training steps/s, patches/s, voxels/s, data-wait fraction and peak memory."""
    from glioseg.bench.train import bench_train

    bench_train(config, list(set_ or []), [a.strip() for a in amp.split(",") if a.strip()],
                steps=steps, warmup=warmup, cache=str(cache) if cache else None, nproc=nproc,
                device=device, reference=reference)

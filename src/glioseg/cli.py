"""The ``glioseg`` command line: thin Typer commands.

Heavy imports (numpy, torch, nibabel, ...) happen inside each command so that ``--help`` is
instant. Commands parse arguments, call one function of the pipeline, and turn the
project's user-facing errors into a clear message and a non-zero exit status.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from glioseg.errors import GliosegError

app = typer.Typer(
    help="3D brain-tumour segmentation of multi-modal MRI (BraTS): synthetic cohorts, "
    "training, transfer learning, CPU inference, evaluation and reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


_Command = TypeVar("_Command", bound=Callable[..., None])


def user_errors(command: _Command) -> _Command:
    """A command whose ``GliosegError`` (an error the user can act on) becomes one red line and
    exit status 1; any other exception is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except GliosegError as exc:
            _fail(str(exc))

    return run  # type: ignore[return-value]


@app.command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 10,
    layout: Annotated[str, typer.Option(help="brats2020, brats2021 or brats2023.")] = "brats2021",
    site: Annotated[str, typer.Option(help="Site profile: source, target or target-severe.")] = "source",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    spacing: Annotated[float, typer.Option(help="Voxel size in mm (1 = BraTS grid).")] = 1.0,
    start: Annotated[int, typer.Option(help="Index of the first case id.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
) -> None:
    """Write a realistic synthetic BraTS-like cohort in a published BraTS layout."""
    from glioseg.data.synthetic import write_cohort

    paths = write_cohort(out_dir, n_cases=cases, layout=layout, site=site, seed=seed,
                         spacing=spacing, start=start, workers=workers)
    typer.echo(f"wrote {len(paths)} cases to {out_dir}")


@app.command()
@user_errors
def inspect(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS/MSD data folder or one case folder.")],
    quick: Annotated[bool, typer.Option(help="Headers only: skip voxel checks.")] = False,
    modalities: Annotated[str | None, typer.Option(help="The sequences to use, e.g. t2,t1: a "
                                                   "case needs only those (default: all "
                                                   "four).")] = None,
) -> None:
    """Discover and validate cases; print a table; exit non-zero if any case is bad."""
    from glioseg.data.inspect import inspect_dir

    n_bad = inspect_dir(data_dir, read_voxels=not quick, modalities=modalities)
    if n_bad:
        raise typer.Exit(1)


@app.command()
@user_errors
def show(
    case_dir: Annotated[Path, typer.Argument(help="One case folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path("case.png"),
    pred: Annotated[Path | None, typer.Option(help="A predicted segmentation to show beside.")] = None,
    views: Annotated[str, typer.Option(help="Comma list of axial, coronal, sagittal.")] = "axial",
    pred_labels: Annotated[str | None, typer.Option(help="Label scheme of --pred (default: the "
                                                    "case's; other values are an error).")] = None,
) -> None:
    """Draw the four contrasts and the segmentation overlay on the slice of largest tumour."""
    from glioseg.report.figures import show_case

    show_case(case_dir, output, pred=pred, views=tuple(v.strip() for v in views.split(",")),
              pred_labels=pred_labels)
    typer.echo(f"wrote {output}")


@app.command()
@user_errors
def preprocess(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS/MSD data folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Cache folder.")],
    spacing: Annotated[float | None, typer.Option(help="Resample to this isotropic spacing (mm).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    modalities: Annotated[str | None, typer.Option(help="The sequences to use, e.g. t2,t1: a "
                                                   "case needs only those; the others are "
                                                   "stored as zero channels marked missing "
                                                   "(default: all four).")] = None,
) -> None:
    """Crop to the brain, z-score per modality, optionally resample; write a memory-mappable cache."""
    from glioseg.preprocess.run import preprocess_dir

    ids = preprocess_dir(data_dir, output, spacing=spacing, workers=workers,
                         modalities=modalities)
    typer.echo(f"{len(ids)} cases in {output}")


bench_app = typer.Typer(help="Benchmarks: commands that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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
) -> None:
    """Patches/s of our patch pipeline vs a plain MONAI pipeline doing the same work."""
    from glioseg.bench.data import bench_data

    bench_data(cache_dir, (patch,) * 3, batch_size=batch_size, batches=batches,
               warmup=warmup, num_workers=workers, seed=seed)


@app.command()
@user_errors
def shift(
    source: Annotated[Path, typer.Option(help="Cohort the model learnt from (any layout).")],
    target: Annotated[Path, typer.Option(help="Cohort of the new site.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for shift.json + PNGs.")],
    model: Annotated[Path | None, typer.Option(help="Model folder or .safetensors: adds a "
                                               "test on its encoder features.")] = None,
    permutations: Annotated[int, typer.Option(help="Permutations per MMD test.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of voxel/patch sampling and permutations.")] = 0,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
) -> None:
    """How different is a new site from the source data? MMD tests, figures and advice."""
    from glioseg.analysis.shift_run import run_shift

    net, spacing, mods = None, None, None
    if model is not None:
        from glioseg.model.card import load_model

        net, card = load_model(model)
        spacing = (getattr(card, "preprocessing", None) or {}).get("spacing")
        mods = list(card.modalities)
    doc = run_shift(source, target, output, model=net, spacing=spacing,
                    n_permutations=permutations, seed=seed, alpha=alpha,
                    model_path=None if model is None else str(model), modalities=mods)
    typer.echo(doc["verdict"])
    for line in doc["advice"]:
        typer.echo(f"- {line}")
    typer.echo(f"wrote {output / 'shift.json'} and {len(doc['figures'])} figures")


@app.command()
@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (training, evaluation, shift, "
                                            "demo...).")],
    title: Annotated[str | None, typer.Option(help="Report title (default: folder name).")] = None,
) -> None:
    """Render RUN_DIR/report.html (self-contained) and RUN_DIR/report.md from what it holds."""
    from glioseg.report.html import write_report

    html_path, md_path = write_report(run_dir, title=title)
    typer.echo(f"wrote {html_path} and {md_path}")


def _parse_roi(roi: str | None) -> tuple[int, int, int] | None:
    if roi is None:
        return None
    try:
        values = [int(v) for v in roi.replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        _fail(f"--roi must be one size or three (e.g. 128 or 128,128,96), got {roi!r}")
    return (values[0], values[1], values[2])


def _parse_sizes(sizes: str | None) -> tuple[float, float, float] | None:
    """``--min-size WT,TC,ET`` (mm^3) -> three floats, or None."""
    if sizes is None:
        return None
    try:
        values = tuple(float(v) for v in sizes.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        _fail(f"--min-size must be three sizes in mm^3, WT,TC,ET (e.g. 250,150,100), got "
              f"{sizes!r}")
    return values  # type: ignore[return-value]


@app.command()
@user_errors
def predict(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Checkpoint (folder or "
                                              ".safetensors); repeat to ensemble folds.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Data folder or one case folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <case_id>.nii.gz.")],
    engine: Annotated[str, typer.Option(help="torch, onnxruntime or openvino.")] = "torch",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 (CPU with AVX-512 BF16) or fp16 "
                                       "(cuda).")] = "fp32",
    tta: Annotated[bool, typer.Option(help="Mirror test-time augmentation (8x slower).")] = False,
    overlap: Annotated[float, typer.Option(help="Window overlap fraction.")] = 0.5,
    batch: Annotated[int, typer.Option(help="Windows per network call.")] = 1,
    mode: Annotated[str, typer.Option(help="auto: the whole brain box in one forward, as "
                                      "training validates, when it fits in memory, else "
                                      "windows; whole; or sliding (windows of --roi).")] = "auto",
    roi: Annotated[str | None, typer.Option(help="Window size, e.g. 128 or 160,192,160 "
                                            "(sliding windows; default: the model's patch "
                                            "size).")] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write WT/TC/ET probabilities "
                                           "(<case>_probabilities.nii.gz).")] = False,
    scheme: Annotated[str | None, typer.Option(help="Output labels: brats2020 (1/2/4) or "
                                               "brats2023 (1/2/3); default: the input's.")] = None,
    et_threshold: Annotated[int | None, typer.Option(help="ET rule: a predicted ET under this "
                                                     "many voxels becomes necrosis (default: "
                                                     "the card's, else off).")] = None,
    min_component: Annotated[int, typer.Option(help="Remove tumour components smaller than "
                                               "this (voxels).")] = 0,
    min_size: Annotated[str | None, typer.Option(help="Smallest component kept per region, "
                                                 "WT,TC,ET in mm^3 (e.g. 250,150,100; 0,0,0 "
                                                 "turns it off); default: the card's "
                                                 "(glioseg tune-postprocess).")] = None,
    threshold: Annotated[float, typer.Option(help="Region probability threshold.")] = 0.5,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Predict cases already predicted.")] = False,
) -> None:
    """Segment every case under INPUT; a failing case is reported and the others go on."""
    from glioseg.infer.predict import PredictOptions, predict_dir

    if threads:
        import torch

        torch.set_num_threads(threads)
    opts = PredictOptions(engine=engine, device=device, dtype=dtype, mode=mode,
                          roi=_parse_roi(roi), overlap=overlap, batch=batch, tta=tta,
                          threshold=threshold, et_min_voxels=et_threshold,
                          min_component=min_component, min_size_mm3=_parse_sizes(min_size),
                          scheme=scheme,
                          probabilities=probabilities, overwrite=overwrite, threads=threads)
    summary = predict_dir(model, input, output, opts)
    typer.echo(f"predicted {len(summary.predicted)}, skipped {len(summary.skipped)} (already "
               f"done), failed {len(summary.failed)}; outputs in {output}")
    for case_id, message in summary.failed.items():
        typer.secho(f"FAILED {case_id}: {message}", fg=typer.colors.RED, err=True)
    if summary.failed:
        raise typer.Exit(1)


@app.command("tune-postprocess")
@user_errors
def tune_postprocess_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder (a run's best/ or "
                                        "last/).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Labelled validation cases (a "
                                        "BraTS folder) that will never be scored afterwards.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the choice; leave the card "
                                          "unchanged.")] = False,
) -> None:
    """Choose per-region size thresholds (WT, TC, ET) on validation cases to maximise
    lesion-wise Dice, record them in the model card (predict applies them), print before/after."""
    from glioseg.evaluate.tune_postprocess import tune_postprocess

    result = tune_postprocess(model, input, write=not dry_run)
    typer.echo(result.table())
    typer.echo("card unchanged (--dry-run)" if dry_run else f"recorded in {model}'s card; "
               "glioseg predict applies it (--min-size overrides)")


@app.command()
@user_errors
def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint folder or .safetensors.")],
    format: Annotated[str, typer.Option("--format", help="onnx or openvino.")] = "onnx",
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write (.onnx, or .xml "
                                         "with its .bin).")] = Path("model.onnx"),
) -> None:
    """Export the network (dynamic spatial size) and check its outputs match PyTorch's.

    The file is checked under a temporary name and renamed only if it passes."""
    from glioseg.infer.export import PARITY_ATOL, export_checked
    from glioseg.infer.predict import load_model, model_divisor, model_in_channels, model_roi

    net, _ = load_model(model)
    div = model_divisor(net)
    size = tuple(max(div, 64 // div * div) for _ in range(3))
    path, diff = export_checked(net, output, format, model_in_channels(net),
                                example_size=model_roi(net), size=size)
    typer.echo(f"wrote {path}; max |logit difference| vs PyTorch on a random {size} patch: "
               f"{diff:.2e} (tolerance {PARITY_ATOL:g})")


@bench_app.command("predict")
@user_errors
def bench_predict_cmd(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint (default: an "
                                               "untrained network of --preset).")] = None,
    preset: Annotated[str, typer.Option(help="Network preset when no --model: small or "
                                        "full.")] = "full",
    engines: Annotated[str | None, typer.Option(help="Comma list of engine:dtype to time "
                                                "(default: every engine in fp32 and int8, and "
                                                "bf16 where this CPU has it natively).")] = None,
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
                  case_dir=case, overlap=overlap, roi=_parse_roi(roi), batch=batch,
                  reference=reference, output=output, calibration=calibration,
                  device=device)


@app.command()
@user_errors
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of <case_id>.nii.gz predictions.")],
    ref: Annotated[Path, typer.Option("--ref", help="BraTS/MSD data folder with references.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the tables.")],
    scheme: Annotated[str | None, typer.Option(help="brats2020 (legacy) or brats2023 "
                                               "(lesion-wise); default from the layout.")] = None,
    spacing_mm: Annotated[bool, typer.Option("--spacing-mm", help="Legacy distances in mm from "
                                             "the image spacing (default: voxels, as the 2020 "
                                             "portal); lesion-wise scores always use it, as the "
                                             "BraTS 2023 code.")] = False,
    pred_labels: Annotated[str | None, typer.Option(help="Label scheme of the predictions "
                                                    "(default: the reference's).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    figures: Annotated[bool, typer.Option("--figures", help="Box plots and best/median/worst "
                                          "slice overlays.")] = False,
) -> None:
    """Score predictions with the official BraTS metrics; write per_case.csv, summary.json/.md
    (and timings.json, hardware.json)."""
    import time

    from glioseg.evaluate.folder import evaluate_folder
    from glioseg.runinfo import record_run

    started = time.perf_counter()
    result = evaluate_folder(pred, ref, output, scheme=scheme, spacing_mm=spacing_mm,
                             workers=workers, pred_label_scheme=pred_labels, figures=figures)
    record_run(output, "evaluate", time.perf_counter() - started,
               **{"cases scored": len(result.rows), "workers": workers})
    missing = result.summary["missing_predictions"]
    if missing:
        typer.secho(f"{len(missing)} missing prediction(s) scored as empty: {', '.join(missing)}",
                    fg=typer.colors.YELLOW, err=True)
    if result.summary["unmatched_predictions"]:
        typer.secho("predictions with no reference case (ignored): "
                    + ", ".join(result.summary["unmatched_predictions"]),
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(result.paths["markdown"].read_text())
    typer.echo(f"wrote {', '.join(str(p) for p in result.paths.values())}")


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


# Options shared by train, finetune and pretrain (one definition, one help text).
ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML file or preset (small, "
                                               "full); default small, or OUT/config.yaml with "
                                               "--resume.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. train.steps=200 "
                                                  "(repeatable).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in OUT (an error if it has no "
                                         "checkpoint).")]
NprocOpt = Annotated[int, typer.Option(help="Processes per node (torchrun).")]
NnodesOpt = Annotated[int, typer.Option(help="Nodes (torchrun, c10d rendezvous).")]
NodeRankOpt = Annotated[int, typer.Option(help="This node's rank.")]
RdzvOpt = Annotated[str | None, typer.Option(help="HOST:PORT every node reaches.")]
MaxRestartsOpt = Annotated[int, typer.Option(help="torchrun restarts of crashed workers (they "
                                              "resume from the last checkpoint).")]


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics, curves.")],
    data: Annotated[Path | None, typer.Option("--data", help="A preprocessed cache, or a raw "
                                              "BraTS folder (preprocessed into OUT/cache).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm) when preprocessing.")] = None,
    profile: Annotated[bool, typer.Option(help="Profile a few steps instead of training.")] = False,
    profile_steps: Annotated[int, typer.Option(help="Steps to profile.")] = 4,
) -> None:
    """Train a segmentation model on one process, or many with --nproc / --nnodes (DDP)."""
    _launch_training(out, data, config, list(set_ or []), resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing, profile=profile,
                     profile_steps=profile_steps)


def _launch_training(out: Path, data: Path | None, config: str | None,
                     sets: list[str], *, resume: bool = False, nproc: int = 1, nnodes: int = 1,
                     node_rank: int = 0, rdzv_endpoint: str | None = None,
                     max_restarts: int = 0, spacing: float | None = None,
                     profile: bool = False, profile_steps: int = 4,
                     modalities: list[str] | None = None) -> None:
    """What ``train``, ``finetune`` and ``pretrain`` share: resolve the config, prepare the
    data, then run here or relaunch this command's workers under torchrun."""
    import subprocess

    from glioseg.train import config as C
    from glioseg.train import fit as F

    base = config
    if base is None:
        saved = out / "config.yaml"
        base = str(saved) if resume and saved.is_file() else "small"
    if data is not None:
        cache = F.prepare_data(data, out, spacing=spacing, modalities=modalities)
        sets.append(f"data.cache_dir={cache.resolve()}")
    cfg = C.load_config(base, sets)
    if not cfg.data.cache_dir:
        _fail("no data: pass --data CACHE_OR_DATA_DIR (or --resume a run that has one)")
    if nproc > 1 or nnodes > 1:
        out.mkdir(parents=True, exist_ok=True)
        launch = out / "launch.yaml"
        # one writer: node 0's launcher. The workers of every node read its file; they
        # start only once every node's agent joined the rendezvous, node 0's after this.
        if node_rank == 0:
            C.dump_config(cfg, launch)
        args = ["--out", str(out), "--config", str(launch)]
        args += ["--resume"] if resume else []
        args += ["--profile", "--profile-steps", str(profile_steps)] if profile else []
        cmd = F.torchrun_command(args, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                                 rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
                                 run_id=out.resolve().name)
        raise typer.Exit(subprocess.run(cmd, env=F.torchrun_env(nnodes)).returncode)
    if profile:
        from glioseg.train.profile import profile_training

        profile_training(cfg, out, steps=profile_steps)
        return
    summary = F.fit(cfg, out, resume=resume)
    if summary.get("rank", 0) != 0:
        return
    if summary.get("n_cases"):
        typer.echo(f"step {summary['step']}: validation Dice WT {summary['dice_WT']:.3f} "
                   f"TC {summary['dice_TC']:.3f} ET {summary['dice_ET']:.3f}; best mean "
                   f"{summary['best_metric']:.3f} at step {summary['best_step']}; run in {out}")
        pipeline = summary.get("val_pipeline", "")
        typer.echo(f"validated with: {pipeline}" + (
            " (as glioseg predict does by default)" if pipeline == "whole volume" else
            " (glioseg predict --mode sliding with this ROI and overlap repeats it)"))
    else:
        typer.echo(f"step {summary['step']}; run in {out}")


@app.command()
@user_errors
def finetune(
    from_: Annotated[Path, typer.Option("--from", help="Pretrained model: a run's best/ or "
                                        "last/ folder, an imported checkpoint folder, a "
                                        ".safetensors or card.json.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder of the fine-tuning.")],
    data: Annotated[Path | None, typer.Option("--data", help="The new site's cache or raw "
                                              "BraTS folder (labelled cases).")] = None,
    strategy: Annotated[str, typer.Option(help="full, frozen-encoder, gradual or "
                                          "discriminative.")] = "full",
    modalities: Annotated[str | None, typer.Option(help="The new site's sequences by name, in "
                                                   "input order, e.g. t2,t1 (default: the "
                                                   "pretrained model's when the data has them "
                                                   "all, else the data's, adapted by "
                                                   "name).")] = None,
    layer_decay: Annotated[float, typer.Option(help="Learning-rate factor per stage towards the "
                                               "input (0: the strategy's default).")] = 0.0,
    new_head: Annotated[bool, typer.Option(help="Start the output heads afresh.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm); default: the model card's.")] = None,
) -> None:
    """Fine-tune a pretrained model on a new site: loads what fits by name and shape, maps
    input sequences by name, prints the load report, trains with the chosen strategy."""
    from glioseg.model.card import load_card

    card = load_card(from_)
    mods = _finetune_modalities(card, modalities, data, resume)
    if spacing is None and data is not None and not (data / "dataset.json").is_file():
        sp = (card.preprocessing or {}).get("spacing")
        spacing = float(sp[0]) if sp else None
    sets = [f"transfer.init_from={from_.resolve()}", f"transfer.strategy={strategy}",
            f"transfer.layer_decay={layer_decay}", f"transfer.new_head={new_head}",
            *([f"data.modalities=[{','.join(mods)}]"] if mods else []), *(set_ or [])]
    if not resume:
        sets = _card_model_overrides(card) + sets
    _launch_training(out, data, config, sets, resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing, modalities=mods)


def _finetune_modalities(card: object, modalities: str | None, data: Path | None,
                         resume: bool) -> list[str] | None:
    """The fine-tuning run's sequences: ``--modalities``; else read from ``--data``
    (``glioseg.train.fit.finetune_modalities``: the card's when the data has them all, else
    the data's, saying so); else the card's, or None on ``--resume`` (the run's config keeps
    its own)."""
    from glioseg.model.weights import canonical_modality
    from glioseg.train import fit as F

    if modalities:
        return [canonical_modality(m) for m in modalities.split(",") if m.strip()]
    source = [canonical_modality(m) for m in card.modalities]  # type: ignore[attr-defined]
    if data is None:
        return None if resume else source
    available, where = F.data_modalities(data)
    mods = F.finetune_modalities(source, available)
    if mods != source:
        typer.echo(f"sequences: {', '.join(mods)}, read from the data ({where}); the pretrained "
                   f"model takes {', '.join(source)}: its input filters are adapted by name "
                   "(see the load report; --modalities chooses others)")
    return mods


_NOT_FROM_CARD = ("in_channels", "out_channels", "deep_supervision", "patch_size",
                  "gradient_checkpointing")


def _card_model_overrides(card: object) -> list[str]:
    """``model.*`` overrides giving the pretrained model's architecture (its weights load only
    into a network of the same shape), and its training patch size: fine-tuning on smaller
    patches than the model learnt on lowered target Dice in the label-efficiency study
    (instance-norm statistics of small tumour-centred patches differ from whole-volume ones).
    Inputs, outputs and deep supervision stay the fine-tuning run's own; ``--set`` wins."""
    import json

    model = dict(card.model)  # type: ignore[attr-defined]
    sets = [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k not in _NOT_FROM_CARD]
    if model.get("patch_size"):
        sets.append(f"data.patch_size={json.dumps(list(model['patch_size']))}")
    return sets


@app.command()
@user_errors
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Run folder of the pretraining.")],
    data: Annotated[Path | None, typer.Option("--data", help="Cache or raw BraTS folder; "
                                              "labels are not needed.")] = None,
    modalities: Annotated[str | None, typer.Option(help="Sequences by name, in input order "
                                                   "(default t1,t1ce,t2,flair).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm) when preprocessing.")] = None,
) -> None:
    """Self-supervised pretraining on unlabelled scans (Models Genesis restoration with the
    segmentation network, so its encoder and decoder transfer to `glioseg finetune`)."""
    sets = ["train.task=genesis", *(set_ or [])]
    if modalities:
        from glioseg.model.weights import canonical_modality

        mods = [canonical_modality(m) for m in modalities.split(",") if m.strip()]
        sets.insert(1, f"data.modalities=[{','.join(mods)}]")
    _launch_training(out, data, config, sets, resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing,
                     modalities=mods if modalities else None)


@app.command()
@user_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="PNG (default "
                                                "RUN_DIR/curves.png).")] = None,
) -> None:
    """Draw the training loss and validation Dice curves of a run."""
    from glioseg.report.curves import plot_run

    path = plot_run(run_dir, output)
    typer.echo(f"wrote {path}")


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
) -> None:
    """Training steps/s, patches/s, voxels/s, data-wait fraction and peak memory."""
    from glioseg.bench.train import bench_train

    bench_train(config, list(set_ or []), [a.strip() for a in amp.split(",") if a.strip()],
                steps=steps, warmup=warmup, cache=str(cache) if cache else None, nproc=nproc)


@app.command()
@user_errors
def card(
    checkpoint: Annotated[Path, typer.Argument(help="Model folder, model.safetensors or card.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the card's JSON as stored.")] = False,
    et_threshold: Annotated[int | None, typer.Option(help="Record the ET rule threshold "
                                                     "(voxels; e.g. chosen on validation "
                                                     "cases) in the card; predict uses it.")
                            ] = None,
) -> None:
    """Print a model's card: architecture, inputs, outputs, preprocessing, training, provenance."""
    from glioseg.model.card import CARD_NAME, load_card, resolve_paths, save_card

    model_card = load_card(checkpoint)
    if et_threshold is not None:
        if et_threshold < 0:
            _fail(f"--et-threshold must be >= 0, got {et_threshold}")
        model_card = model_card.replace(et_threshold=et_threshold)
        path = checkpoint if checkpoint.name == CARD_NAME else resolve_paths(checkpoint)[1]
        save_card(path, model_card)
    typer.echo(model_card.to_json() if as_json else model_card.summary(), nl=not as_json)


@app.command("import-checkpoint")
@user_errors
def import_checkpoint_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="The foreign checkpoint file.")],
    kind: Annotated[str, typer.Option(help="monai-segresnet, swinunetr, swinvit-ssl or nnunet.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    modalities: Annotated[str | None, typer.Option(help="Comma list of input sequences in the "
                                                   "checkpoint's order (when it does not say).")] = None,
    array_axes: Annotated[str, typer.Option(help="nnunet: zyx (SimpleITK reader) or xyz "
                                            "(NibabelIO).")] = "zyx",
) -> None:
    """Convert a MONAI / nnU-Net checkpoint into a model folder (safetensors + card), safely."""
    from glioseg.transfer.foreign import import_checkpoint

    kwargs: dict[str, object] = {}
    if modalities:
        kwargs["modalities"] = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if kind == "nnunet":
        kwargs["array_axes"] = array_axes
    imported = import_checkpoint(checkpoint, kind, **kwargs)
    out = imported.save(output)
    for note in imported.notes:
        typer.echo(f"note: {note}")
    typer.echo(imported.card.summary())
    typer.echo(f"wrote {out}")


study_app = typer.Typer(help="Studies: the measured payoff of transfer learning.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("label-efficiency")
@user_errors
def study_label_efficiency_cmd(
    out: Annotated[Path, typer.Option("--out", help="Study folder (re-running resumes it).")],
    seeds: Annotated[int | None, typer.Option(help="Seeds (labelled-case draws); default 3, "
                                              "1 with --quick.")] = None,
    n_labelled: Annotated[str | None, typer.Option(help="Labelled target cases, e.g. 1,2,4,8 "
                                                   "(default; 2 with --quick).")] = None,
    steps: Annotated[int | None, typer.Option(help="One fixed step budget for every target "
                                              "run (default: 50 per labelled case within "
                                              "100-250; 20 with --quick).")] = None,
    finetune_lr: Annotated[float | None, typer.Option(
        help="Peak learning rate when fine-tuning a supervised source model (default 1e-4; "
             "scratch and self-supervised arms keep the preset's).")] = None,
    quick: Annotated[bool, typer.Option(help="A ~2-minute version (small cohorts, short "
                                        "runs).")] = False,
) -> None:
    """Label efficiency on a synthetic target site: scratch vs fine-tuned vs self-supervised
    pretraining, with 1-8 labelled cases and 3 seeds, equal step budgets per number of cases;
    results.csv, summary.md (95% intervals over seeds), plots and study.json (render with
    `glioseg report OUT`). About 30 minutes on a 2-core CPU; --quick about 2."""
    from dataclasses import replace

    from glioseg.study import StudyPlan, quick_plan, run_study

    plan = quick_plan() if quick else StudyPlan()
    changes: dict[str, object] = {}
    if seeds is not None:
        changes["seeds"] = tuple(range(seeds))
    if n_labelled is not None:
        try:
            changes["n_labelled"] = tuple(int(v) for v in n_labelled.split(",") if v.strip())
        except ValueError:
            _fail(f"--n-labelled {n_labelled!r}: expected integers, e.g. 1,2,4,8")
    if steps is not None:
        changes["steps"] = steps
    if finetune_lr is not None:
        changes["finetune_lr"] = finetune_lr
    if changes:
        plan = replace(plan, **changes)
    doc = run_study(out, plan)
    typer.echo(doc["verdict"])
    typer.echo(f"wrote {out / 'results.csv'}, {out / 'summary.md'}, {out / 'study.json'} and "
               f"{len(doc['figures'])} figures in {doc['wall_s']:.0f} s")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo folder (re-running resumes it).")] =
        Path("glioseg-demo"),
    full: Annotated[bool, typer.Option(help="The 1 mm version with the full preset (for a "
                                       "GPU; hours on a CPU).")] = False,
    quick: Annotated[bool, typer.Option(help="A version of about a minute that checks the "
                                        "plumbing (tiny cohorts, a few steps; the numbers "
                                        "mean nothing).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and exit.")] = False,
) -> None:
    """Synthetic source and target sites -> domain shift -> train on the source -> fine-tune vs
    scratch on a few target cases -> predict + BraTS metrics -> OUT/report.html (~5 min on 2
    CPU cores)."""
    from glioseg.demo import describe_plan, plan_for, run_demo

    plan = plan_for(quick=quick, full=full)
    for line in describe_plan(plan):
        typer.echo(line)
    if dry_run:
        return
    result = run_demo(out, plan, log=lambda line: typer.echo(line))
    typer.echo("")
    typer.echo(result["table"])
    typer.echo(result["verdict"])
    typer.echo(f"report: {result['report'].resolve()}  ({result['wall_s']:.0f} s; "
               f"ran {', '.join(result['ran']) or 'nothing'}"
               + (f"; skipped {', '.join(result['skipped'])} (done before)"
                  if result["skipped"] else "") + ")")


def main() -> None:  # pragma: no cover - console entry point alias
    app()

"""``glioseg`` commands on models' outputs: report, predict, tune-postprocess, export and
evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glioseg.cli.common import app, fail, parse_roi, user_errors


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


def _parse_sizes(sizes: str | None) -> tuple[float, float, float] | None:
    """``--min-size WT,TC,ET`` (mm^3) -> three floats, or None."""
    if sizes is None:
        return None
    try:
        values = tuple(float(v) for v in sizes.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        fail(f"--min-size must be three sizes in mm^3, WT,TC,ET (e.g. 250,150,100), got "
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
    dtype: Annotated[str, typer.Option(help="fp32, bf16 (CPU with AVX-512 BF16), fp16 "
                                       "(cuda) or auto (fp16 on cuda, bf16 on a CPU with "
                                       "native bf16, else fp32; predict.json records the "
                                       "choice).")] = "fp32",
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
    prefetch: Annotated[int, typer.Option(help="Cases read ahead and written behind while one "
                                          "is predicted (0: one case after another).",
                                          min=0)] = 1,
) -> None:
    """Segment every case under INPUT; a failing case is reported and the others go on."""
    from glioseg.infer.predict import PredictOptions, predict_dir

    if threads:
        import torch

        torch.set_num_threads(threads)
    opts = PredictOptions(engine=engine, device=device, dtype=dtype, mode=mode,
                          roi=parse_roi(roi), overlap=overlap, batch=batch, tta=tta,
                          threshold=threshold, et_min_voxels=et_threshold,
                          min_component=min_component, min_size_mm3=_parse_sizes(min_size),
                          scheme=scheme,
                          probabilities=probabilities, overwrite=overwrite, threads=threads,
                          prefetch=prefetch)
    try:
        summary = predict_dir(model, input, output, opts)
    except KeyboardInterrupt:
        typer.secho(_interrupted(output), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    rate = summary.cases_per_minute
    typer.echo(f"predicted {len(summary.predicted)}, skipped {len(summary.skipped)} (already "
               f"done), failed {len(summary.failed)}; outputs in {output}"
               + (f"; {rate:.1f} cases per minute" if rate else ""))
    for case_id, message in summary.failed.items():
        # the message names the case, mostly first: "FAILED <id>: <id>: ..." said it twice
        line = message if message.startswith(f"{case_id}:") else f"{case_id}: {message}"
        typer.secho(f"FAILED {line}", fg=typer.colors.RED, err=True)
    if summary.failed:
        raise typer.Exit(1)


def _interrupted(output: Path) -> str:
    """The line after Ctrl-C: how many cases OUTPUT holds and how to go on."""
    from glioseg.records import read_json_object

    done = len((read_json_object(output / "predict.json") or {}).get("predicted", []))
    held = (f"{done} case(s) predicted in {output} (its predict.json lists them)" if done
            else "no case predicted yet")
    return (f"interrupted: {held}; run the same command again to go on (finished cases are "
            "skipped)")


@app.command("tune-postprocess")
@user_errors
def tune_postprocess_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder (a run's best/ or "
                                        "last/).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Labelled validation cases (a "
                                        "BraTS folder) that will never be scored afterwards.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the choice; leave the card "
                                          "unchanged.")] = False,
    labels: Annotated[str | None, typer.Option(help="Label scheme of the cases' segmentations "
                                               "when not what the file names say (e.g. "
                                               "brats2023 for BraTS 2021 names with 0/1/2/3 "
                                               "labels).")] = None,
) -> None:
    """Choose per-region size thresholds (WT, TC, ET) on validation cases to maximise
    lesion-wise Dice, record them in the model card (predict applies them), print before/after."""
    from glioseg.data.labels import declared_scheme
    from glioseg.evaluate.tune_postprocess import tune_postprocess

    result = tune_postprocess(model, input, write=not dry_run,
                              label_scheme=declared_scheme(labels, "--labels"))
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
                                                    "(default: the one PRED/predict.json "
                                                    "records, else the reference's).")] = None,
    ref_labels: Annotated[str | None, typer.Option(help="Label scheme of the reference "
                                                   "segmentations: brats2020/brats2021 "
                                                   "(0/1/2/4), brats2023 (0/1/2/3, also "
                                                   "nnU-Net's conversion) or msd (default: "
                                                   "the one of each case's layout).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    figures: Annotated[bool, typer.Option("--figures", help="Box plots and best/median/worst "
                                          "slice overlays.")] = False,
) -> None:
    """Score predictions with the official BraTS metrics; write per_case.csv, summary.json/.md
    (and timings.json, hardware.json)."""
    import time

    from glioseg.data.labels import declared_scheme
    from glioseg.evaluate.folder import evaluate_folder
    from glioseg.runinfo import record_run

    started = time.perf_counter()
    declared_scheme(ref_labels, "--ref-labels")
    if pred_labels is None:
        from glioseg.evaluate.folder import recorded_label_scheme

        pred_labels = recorded_label_scheme(pred)
        if pred_labels is not None:
            typer.echo(f"reading the predictions in the {pred_labels} label scheme, as "
                       f"{pred / 'predict.json'} records (--pred-labels overrides)", err=True)
    result = evaluate_folder(pred, ref, output, scheme=scheme, spacing_mm=spacing_mm,
                             workers=workers, pred_label_scheme=pred_labels,
                             ref_label_scheme=ref_labels)
    if figures:
        from glioseg.report.eval_figures import draw_evaluation_figures

        draw_evaluation_figures(result, output)
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

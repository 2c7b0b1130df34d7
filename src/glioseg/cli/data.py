"""``glioseg`` commands on data: synth, inspect, show, preprocess and shift."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glioseg.cli.common import app, user_errors

LABELS_HELP = ("Label scheme of the segmentation files: brats2020/brats2021 (0/1/2/4), "
               "brats2023 (0/1/2/3, also nnU-Net's conversion) or msd (default: the one of "
               "each case's layout).")

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
    labels: Annotated[str | None, typer.Option(help=LABELS_HELP)] = None,
) -> None:
    """Discover and validate cases; print a table; exit non-zero if any case is bad."""
    from glioseg.data.inspect import inspect_dir
    from glioseg.data.labels import declared_scheme

    n_bad = inspect_dir(data_dir, read_voxels=not quick, modalities=modalities,
                        label_scheme=declared_scheme(labels))
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
    labels: Annotated[str | None, typer.Option(help=LABELS_HELP)] = None,
) -> None:
    """Draw the four contrasts and the segmentation overlay on the slice of largest tumour."""
    from glioseg.data.labels import declared_scheme
    from glioseg.report.figures import show_case

    show_case(case_dir, output, pred=pred, views=tuple(v.strip() for v in views.split(",")),
              pred_labels=pred_labels, labels=declared_scheme(labels, "--labels"))
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
    add: Annotated[bool, typer.Option("--add", help="Add these cases to a cache built from "
                                      "another data folder (default: refuse).")] = False,
    labels: Annotated[str | None, typer.Option(help=LABELS_HELP + " Recorded in the cache: a "
                                               "re-run with another value is refused.")] = None,
) -> None:
    """Crop to the brain, z-score per modality, optionally resample; write a memory-mappable cache."""
    from glioseg.data.labels import declared_scheme
    from glioseg.preprocess.run import preprocess_dir

    ids = preprocess_dir(data_dir, output, spacing=spacing, workers=workers,
                         modalities=modalities, add=add, label_scheme=declared_scheme(labels))
    typer.echo(f"{len(ids)} cases in {output}")


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
    modalities: Annotated[str | None, typer.Option(help="The sequences to compare, e.g. "
                                                   "t2,flair: a case needs only those (and "
                                                   "the model's; default: all four).")] = None,
) -> None:
    """How different is a new site from the source data? MMD tests, figures and advice."""
    from glioseg.analysis.shift_run import analyse_shift, write_shift
    from glioseg.report.shift_figures import draw_shift_figures

    net, spacing, mods = None, None, None
    if model is not None:
        from glioseg.model.card import load_model

        net, card = load_model(model)
        spacing = (getattr(card, "preprocessing", None) or {}).get("spacing")
        mods = list(card.modalities)
    analysis = analyse_shift(source, target, model=net, spacing=spacing,
                             n_permutations=permutations, seed=seed, alpha=alpha,
                             model_path=None if model is None else str(model), modalities=mods,
                             sequences=modalities)
    doc = write_shift(output, analysis, draw_shift_figures(analysis, output))
    typer.echo(doc["verdict"])
    for line in doc["advice"]:
        typer.echo(f"- {line}")
    typer.echo(f"wrote {output / 'shift.json'} and {len(doc['figures'])} figures")

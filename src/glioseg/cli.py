"""The ``glioseg`` command line: thin Typer commands.

Heavy imports (numpy, torch, nibabel, ...) happen inside each command so that ``--help`` is
instant. Commands parse arguments, call one function of the pipeline, and turn the
project's user-facing errors into a clear message and a non-zero exit status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 10,
    layout: Annotated[str, typer.Option(help="brats2020, brats2021 or brats2023.")] = "brats2021",
    site: Annotated[str, typer.Option(help="Site profile: source or target.")] = "source",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    spacing: Annotated[float, typer.Option(help="Voxel size in mm (1 = BraTS grid).")] = 1.0,
    start: Annotated[int, typer.Option(help="Index of the first case id.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
) -> None:
    """Write a realistic synthetic BraTS-like cohort in a published BraTS layout."""
    from glioseg.data.synthetic import write_cohort

    try:
        paths = write_cohort(out_dir, n_cases=cases, layout=layout, site=site, seed=seed,
                             spacing=spacing, start=start, workers=workers)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(paths)} cases to {out_dir}")


@app.command()
def inspect(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS/MSD data folder or one case folder.")],
    quick: Annotated[bool, typer.Option(help="Headers only: skip voxel checks.")] = False,
) -> None:
    """Discover and validate cases; print a table; exit non-zero if any case is bad."""
    from glioseg.data.inspect import inspect_dir

    try:
        n_bad = inspect_dir(data_dir, read_voxels=not quick)
    except ValueError as exc:
        _fail(str(exc))
    if n_bad:
        raise typer.Exit(1)


@app.command()
def show(
    case_dir: Annotated[Path, typer.Argument(help="One case folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path("case.png"),
    pred: Annotated[Path | None, typer.Option(help="A predicted segmentation to show beside.")] = None,
    views: Annotated[str, typer.Option(help="Comma list of axial, coronal, sagittal.")] = "axial",
) -> None:
    """Draw the four contrasts and the segmentation overlay on the slice of largest tumour."""
    from glioseg.report.figures import show_case

    try:
        show_case(case_dir, output, pred=pred, views=tuple(v.strip() for v in views.split(",")))
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {output}")


@app.command()
def preprocess(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS/MSD data folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Cache folder.")],
    spacing: Annotated[float | None, typer.Option(help="Resample to this isotropic spacing (mm).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
) -> None:
    """Crop to the brain, z-score per modality, optionally resample; write a memory-mappable cache."""
    from glioseg.preprocess.run import preprocess_dir

    try:
        preprocess_dir(data_dir, output, spacing=spacing, workers=workers)
    except ValueError as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover - console entry point alias
    app()

"""What every command module of the CLI shares: the Typer apps, the error decorator and the
parsing of option values used by several commands.

Imports no heavy library (numpy, torch, ...): ``glioseg --help`` stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from glioseg.errors import GliosegError

app = typer.Typer(
    help="3D brain-tumour segmentation of multi-modal MRI (BraTS): synthetic cohorts, "
    "training, transfer learning, CPU inference, evaluation and reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

bench_app = typer.Typer(help="Benchmarks: commands that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

study_app = typer.Typer(help="Studies: the measured payoff of transfer learning.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` in red on stderr and exit with ``code``."""
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
            fail(str(exc))

    return run  # type: ignore[return-value]


def parse_roi(roi: str | None) -> tuple[int, int, int] | None:
    """``--roi 128`` or ``--roi 128,128,96`` (also ``128x128x96``) -> three sizes, or None."""
    if roi is None:
        return None
    try:
        values = [int(v) for v in roi.replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        fail(f"--roi must be one size or three (e.g. 128 or 128,128,96), got {roi!r}")
    return (values[0], values[1], values[2])

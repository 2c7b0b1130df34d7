"""The ``glioseg`` command line: thin Typer commands.

Heavy imports (numpy, torch, nibabel, ...) happen inside each command so that ``--help`` is
instant. Commands parse arguments, call one function of the pipeline, and turn the
project's user-facing errors into a clear message and a non-zero exit status.

One module per group of commands, all registered on the one ``app`` of ``cli.common``:

    common.py       the Typer apps (``app``, ``bench_app``, ``study_app``), ``user_errors``
    data.py         synth, inspect, show, preprocess, shift
    infer.py        report, predict, tune-postprocess, export, evaluate
    train.py        train, finetune, pretrain, plot, card, import-checkpoint
    experiments.py  study label-efficiency, demo
    bench.py        bench cache | data | predict | eval | faults | train

The modules are imported below in that order, which is the order ``glioseg --help`` lists the
commands in.
"""

from __future__ import annotations

from glioseg.cli.common import app, bench_app, fail, study_app, user_errors

# Registration order is the order of --help.
# isort: off
from glioseg.cli import data  # noqa: F401
from glioseg.cli import infer  # noqa: F401
from glioseg.cli import train  # noqa: F401
from glioseg.cli import experiments  # noqa: F401
from glioseg.cli import bench  # noqa: F401
# isort: on

__all__ = ["app", "bench_app", "fail", "main", "study_app", "user_errors"]


def main() -> None:  # pragma: no cover - console entry point alias
    app()

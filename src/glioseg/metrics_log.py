"""``metrics.jsonl``, the log of a training run: its one writer and its one reader.

The trainer (rank 0) appends one JSON record a line and flushes it at once::

    {"step": 10, "split": "train", "loss": ..., "lr": ..., "patches_per_s": ..., ...}
    {"step": 10, "split": "val", "dice_WT": ..., "dice_TC": ..., "dice_ET": ..., ...}
    {"step": 10, "split": "resume", "checkpoint": ..., "notes": [...], "changed": {...}}

Two ways to read it (``records.read_jsonl`` parses the lines):

- strict (the trainer resuming its own log; tests): a run killed mid-write can leave its last
  line torn, and that line is dropped; a bad line before the last raises ``RecordsError``
  naming the file and line (the trainer reports it as a ``TrainError``);
- lenient (reports, plots, the demo and the study, which may read a run still being written):
  every line that is not a JSON record is skipped.

A base module: it imports neither torch nor any stage of the pipeline, so the training code
writes it and the report reads it without either importing the other
(``tests/test_layering.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glioseg.io_atomic import write_text
from glioseg.records import RecordsError, read_jsonl

METRICS_NAME = "metrics.jsonl"
"""The log's file name inside a run folder."""


def parse_metrics(path: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, read strictly (torn last line dropped, a bad
    earlier line an error) or leniently (``strict=False``: bad lines skipped).

    Raises:
        RecordsError: ``strict`` and a bad line before the last (the message names the file
            and the line).
    """
    return read_jsonl(path, strict=strict)


def read_metrics(run_dir: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (``parse_metrics``).

    Raises:
        RecordsError: the folder has no ``metrics.jsonl``, or (``strict``) a bad line before
            its last.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise RecordsError(f"{run_dir}: no {METRICS_NAME} (not a training run folder?)")
    return parse_metrics(path, strict=strict)


class MetricsLog:
    """``metrics.jsonl`` (rank 0): one JSON line per record, flushed at once; on resume the
    records after the checkpoint's step are dropped so the file continues where it stopped.

    ``resume_step=None`` starts a fresh log (an old file is removed); otherwise the file is
    read strictly (``RecordsError`` on a bad line before its last) and rewritten, atomically,
    with the records up to ``resume_step``.
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            if path.exists():
                path.unlink()
        elif path.exists():
            keep = [r for r in parse_metrics(path) if r.get("step", 0) <= resume_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
        self._f = open(path, "a")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and flush it."""
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

"""What the demo and the study both do: cohorts, run-if-not-done markers, validation curves.

- Cohorts: a source site and one target-site stream cut into disjoint index ranges
  (``cohort_specs``), so no scan is in two cohorts; ``prepare_cohort`` writes one cohort's
  synthetic cases and preprocesses them, both resuming case by case.
- Markers: a piece of work is done when its marker (a JSON file) exists; ``run_if_not_done``
  runs it otherwise and writes the marker after it. The demo's ``.stages/<stage>.json`` and the
  study's ``runs/.../result.json`` are such markers; ``check_plan`` refuses a folder made with
  another plan.
- ``val_records``: the validation records of a run's ``metrics.jsonl`` (its learning curve).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from glioseg import io_atomic
from glioseg.errors import GliosegError
from glioseg.metrics_log import parse_metrics

DICE_KEYS: tuple[str, ...] = ("dice_WT", "dice_TC", "dice_ET", "dice_mean")
"""Validation Dice keys of a ``metrics.jsonl`` record."""


class CohortSpec(NamedTuple):
    """One synthetic cohort: cases ``start .. start + n - 1`` of a site's stream ``seed``."""

    site: str
    """Site profile (``glioseg.data.sites``: ``source``, ``target``)."""
    seed: int
    start: int
    n: int


def cohort_specs(data_seed: int, n_source: int, targets: Sequence[tuple[str, int]]
                 ) -> dict[str, CohortSpec]:
    """``source`` (seed ``data_seed``) and the ``targets`` (name, count) as consecutive,
    disjoint ranges of the target site's stream (seed ``data_seed + 1``), in that order."""
    specs = {"source": CohortSpec("source", data_seed, 0, n_source)}
    start = 0
    for name, n in targets:
        specs[name] = CohortSpec("target", data_seed + 1, start, n)
        start += n
    return specs


def prepare_cohort(raw: Path, cache: Path, specs: Iterable[CohortSpec], *, layout: str,
                   spacing: float, workers: int) -> Path:
    """Write the cases of ``specs`` (one or more ranges) into ``raw``, then preprocess ``raw``
    into ``cache``; both skip what is already there. Returns ``cache``."""
    from glioseg.data.synthetic import write_cohort
    from glioseg.preprocess.run import preprocess_dir

    for spec in specs:
        write_cohort(raw, n_cases=spec.n, layout=layout, site=spec.site, seed=spec.seed,
                     spacing=spacing, start=spec.start, workers=workers)
    preprocess_dir(raw, cache, spacing=None)
    return cache


# --------------------------------------------------------------------------- markers

def read_marker(path: Path) -> dict[str, Any] | None:
    """The content of a marker, None when it does not exist (or is not a JSON object)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def run_if_not_done(marker: Path, work: Callable[[], dict[str, Any]],
                    check: Callable[[dict[str, Any]], None] | None = None
                    ) -> tuple[dict[str, Any], bool]:
    """``(marker content, False)`` when ``marker`` exists (``check`` may refuse it by raising),
    else ``(work(), True)`` after writing ``work()``'s result as the marker."""
    done = read_marker(marker)
    if done is not None:
        if check is not None:
            check(done)
        return done, False
    doc = work()
    io_atomic.write_json(marker, doc, default=str)
    return doc, True


def timed(work: Callable[[], object]) -> Callable[[], dict[str, Any]]:
    """``work`` as a marker's work: runs it and returns ``{"seconds": its duration}``."""
    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        work()
        return {"seconds": round(time.perf_counter() - t0, 1)}
    return run


def check_plan(out: Path, plan_doc: Mapping[str, Any], error: type[GliosegError]) -> None:
    """Refuse a folder whose ``.stages/plan.json`` holds another plan (``error`` naming both
    plans); record ``plan_doc`` in a fresh folder."""
    path = out / ".stages" / "plan.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != plan_doc:
            raise error(f"{out}: holds a demo made with another plan ({saved.get('name')}, "
                        f"this is {plan_doc.get('name')}); use another --out")
        return
    io_atomic.write_json(path, dict(plan_doc))


def stage_marker(out: Path, stage: str) -> Path:
    """The marker of a stage of the folder ``out``: ``out/.stages/<stage>.json``."""
    return out / ".stages" / f"{stage}.json"


# --------------------------------------------------------------------------- curves

def val_records(records: Iterable[Mapping[str, Any]],
                keys: Sequence[str] = ("step", *DICE_KEYS)) -> list[dict[str, float]]:
    """The validation records (``split == "val"``) of a run's metrics, ``keys`` only (those
    present), as floats."""
    return [{k: float(r[k]) for k in keys if k in r} for r in records if r.get("split") == "val"]


def read_val_records(metrics_path: Path, keys: Sequence[str] = ("step", *DICE_KEYS)
                     ) -> list[dict[str, float]]:
    """``val_records`` of a ``metrics.jsonl`` that may be mid-write (bad lines skipped; no
    file: no records)."""
    if not metrics_path.is_file():
        return []
    return val_records(parse_metrics(metrics_path, strict=False), keys)

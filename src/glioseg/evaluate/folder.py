"""Scoring a folder of predictions against a BraTS data folder.

``score_labels`` is the pure per-case function (file-label arrays in, flat dict of scores out);
``evaluate_folder`` is the thin loop around it: match predictions (``<case_id>.nii.gz``) to
reference cases by case id, check the grids, score in parallel, write ``per_case.csv``,
``summary.json`` and ``summary.md`` (each written to a temporary name, then renamed). Its
figures are the report's: ``glioseg.report.eval_figures.draw_evaluation_figures(result)``.

Schemes (``scheme``):

- ``brats2020`` (legacy; BraTS 2017-2021 and the 2020 leaderboard): per region Dice, HD95
  (pooled, CBICA/CaPTk rule), sensitivity, specificity.
- ``brats2023`` (lesion-wise; BraTS 2023 onwards): the same legacy scores plus lesion-wise
  Dice and HD95 and the lesion counts (true positive, false negative, false positive).

Units. The legacy scores measure distances in voxels, as the CBICA portal did (``spacing_mm``:
in mm from the reference's header). The lesion-wise scores always use the voxel size in the
NIfTI header, as the 2023 reference code does (``get_LesionWiseScores`` reads
``header.get_zooms()``): lesion volumes are voxels x voxel volume in mm^3 against the 50 mm^3
threshold, and lesion HD95 is in mm. On BraTS's 1 mm grid both readings agree; on any other
grid (2 mm synthetic cohorts, anisotropic data) only this one matches the challenge's scores.

The scoring scheme is independent of the label convention: labels are read in the reference
layout's file convention (2020/2021: ET = 4; 2023: ET = 3; MSD), or in the one
``ref_label_scheme`` declares (``--ref-labels``: e.g. BraTS 2021 cases whose labels nnU-Net
converted to 0/1/2/3), and predictions in the
convention ``pred_label_scheme`` names, else the one ``glioseg predict --scheme`` recorded in the
prediction folder's ``predict.json``, else the reference's. The default scheme follows the layout:
brats2023 layouts are scored lesion-wise, all others with the legacy scheme.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glioseg import io_atomic
from glioseg.evaluate.lesionwise import DILATION, lesion_parameters, lesion_wise
from glioseg.evaluate.metrics import (
    REGION_NAMES,
    EvaluationError,
    Spacing,
    legacy_scores,
    regions_from_labels,
    union_bbox,
)
from glioseg.io_atomic import remove_leftover_temporaries
from glioseg.records import read_json_object

SCORING_SCHEMES: tuple[str, ...] = ("brats2020", "brats2023")
LEGACY_METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")
LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95")
LESION_COUNTS: tuple[str, ...] = ("lesion_tp", "lesion_fn", "lesion_fp")
PRED_EXTS: tuple[str, ...] = (".nii.gz", ".nii")


def scoring_scheme_for(layout: str) -> str:
    """Default scoring scheme of a reference layout: lesion-wise for brats2023, else legacy."""
    return "brats2023" if layout == "brats2023" else "brats2020"


def check_scheme(scheme: str) -> str:
    if scheme not in SCORING_SCHEMES:
        raise EvaluationError(
            f"unknown scoring scheme {scheme!r}; known: {', '.join(SCORING_SCHEMES)}"
        )
    return scheme


def metric_names(scheme: str) -> tuple[str, ...]:
    """Summarised metrics of a scheme, in column order."""
    return LEGACY_METRICS + (LESION_METRICS if check_scheme(scheme) == "brats2023" else ())


def score_columns(scheme: str) -> list[str]:
    """Score columns of ``per_case.csv``: ``<region>_<metric>`` for every region and metric."""
    names = metric_names(scheme) + (LESION_COUNTS if scheme == "brats2023" else ())
    return [f"{r}_{m}" for r in REGION_NAMES for m in names]


def score_labels(
    pred: np.ndarray | None,
    ref: np.ndarray,
    label_scheme: str,
    scheme: str = "brats2020",
    spacing: Spacing = None,
    case_id: str = "",
    pred_label_scheme: str | None = None,
    sources: tuple[str, str] = ("prediction", "reference"),
    lesion_spacing: Spacing = None,
) -> dict[str, float]:
    """All scores of one case from its label arrays.

    Args:
        pred: ``(X, Y, Z)`` predicted file labels, or None for a missing (empty) prediction.
        ref: ``(X, Y, Z)`` reference file labels, same grid.
        label_scheme: file label convention of ``ref`` (and of ``pred`` by default).
        scheme: ``brats2020`` (legacy) or ``brats2023`` (legacy + lesion-wise).
        spacing: voxel size in mm for the legacy distances; None = voxel units (the legacy
            challenge's default).
        case_id: named in error messages; its challenge tag (``BraTS-MEN-...``, ``-MET-``)
            picks the lesion-wise dilation and volume threshold (``lesion_parameters``).
        pred_label_scheme: label convention of ``pred`` if it differs from ``label_scheme``.
        sources: how error messages name the prediction and the reference (e.g. their files).
        lesion_spacing: voxel size in mm for the lesion-wise scores (volume threshold, HD95):
            the file header's, as the 2023 reference code; None = 1 mm.

    Returns:
        ``{"<region>_<metric>": value}`` for the columns ``score_columns(scheme)``.

    Raises:
        EvaluationError: a label outside the scheme or a grid mismatch, naming the case.
    """
    check_scheme(scheme)
    ref = np.asarray(ref)
    pred = np.zeros(ref.shape, np.uint8) if pred is None else np.asarray(pred)
    if pred.shape != ref.shape:
        raise EvaluationError(f"{case_id}: prediction shape {pred.shape} differs from the "
                              f"reference {ref.shape}")
    # Every metric is computed on the box holding all foreground of both, with room for the
    # lesion-wise dilation; the voxels outside count as true negatives.
    dilation, min_volume = lesion_parameters(case_id)
    box = union_bbox([pred != 0, ref != 0], margin=max(dilation, DILATION) + 1)
    if box is None:
        box = tuple(slice(0, 1) for _ in ref.shape)
    # C order: NIfTI arrays come in Fortran order, which slows every reduction 1.5-3x. The
    # reference first: its scheme is the predictions' default, so its error is the one to fix.
    ref_regions = regions_from_labels(np.ascontiguousarray(ref[box]), label_scheme, case_id,
                                      sources[1])
    pred_regions = regions_from_labels(np.ascontiguousarray(pred[box]),
                                       pred_label_scheme or label_scheme, case_id, sources[0])
    outside = int(ref.size - pred_regions[0].size)
    scores: dict[str, float] = {}
    for i, region in enumerate(REGION_NAMES):
        p, r = pred_regions[i], ref_regions[i]
        for name, value in legacy_scores(p, r, spacing, ref.shape, outside).items():
            scores[f"{region}_{name}"] = value
        if scheme == "brats2023":
            lw = lesion_wise(p, r, lesion_spacing, dilation=dilation, min_volume=min_volume)
            scores[f"{region}_lesion_dice"] = lw.dice
            scores[f"{region}_lesion_hd95"] = lw.hd95
            scores[f"{region}_lesion_tp"] = lw.n_tp
            scores[f"{region}_lesion_fn"] = lw.n_fn
            scores[f"{region}_lesion_fp"] = lw.n_fp
    return scores


@dataclass(frozen=True)
class _Task:
    case_id: str
    seg: Path
    pred: Path | None
    label_scheme: str
    pred_label_scheme: str | None
    scheme: str
    spacing_mm: bool


def find_prediction(pred_dir: Path, case_id: str) -> Path | None:
    """``pred_dir/<case_id>.nii.gz`` (or ``.nii``), or None."""
    for ext in PRED_EXTS:
        p = pred_dir / f"{case_id}{ext}"
        if p.is_file():
            return p
    return None


def evaluate_case_files(task: _Task) -> dict[str, float]:
    """Read one case's reference and prediction, check the grids, and score it.

    Raises:
        EvaluationError: naming the case and the file, for an unreadable file, a grid
            (shape or affine) mismatch or a label outside the scheme.
    """
    from glioseg.data.nifti import load_volume

    try:
        ref, ref_header = load_volume(task.seg, dtype=None)
        pred = None
        if task.pred is not None:
            pred, pred_header = load_volume(task.pred, dtype=None)
    except ValueError as exc:
        raise EvaluationError(f"{task.case_id}: {exc}") from None
    if ref.ndim != 3:
        raise EvaluationError(f"{task.case_id}: {task.seg.name}: expected a 3D segmentation, "
                              f"got shape {ref.shape}")
    if pred is not None:
        name = task.pred.name if task.pred else ""
        if pred.shape != ref.shape:
            raise EvaluationError(f"{task.case_id}: {name}: prediction shape {pred.shape} "
                                  f"differs from the reference {task.seg.name} {ref.shape}")
        if not np.allclose(pred_header.affine, ref_header.affine, atol=1e-3):
            raise EvaluationError(
                f"{task.case_id}: {name}: prediction affine differs from the reference "
                f"{task.seg.name} (not on the same grid):\n{np.round(pred_header.affine, 3)}\n"
                f"vs\n{np.round(ref_header.affine, 3)}"
            )
    spacing = ref_header.spacing if task.spacing_mm else None
    sources = (f"prediction {task.pred.name}" if task.pred else "prediction (missing)",
               f"reference {task.seg.name}")
    # lesion-wise: always the header's voxel size, the prediction's as in the 2023 code
    # (``pred_nii.header.get_zooms()``; the grids were checked equal above), else the reference's
    lesion_spacing = pred_header.spacing if pred is not None else ref_header.spacing
    return score_labels(pred, ref, task.label_scheme, task.scheme, spacing, task.case_id,
                        task.pred_label_scheme, sources, lesion_spacing=lesion_spacing)


def recorded_label_scheme(pred_dir: str | Path) -> str | None:
    """The label scheme ``glioseg predict --scheme`` wrote the predictions of ``pred_dir`` in,
    as its ``predict.json`` records it; None without one (the predictions are then in each
    input case's scheme) or without a readable record."""
    from glioseg.data.labels import SCHEMES

    options = (read_json_object(Path(pred_dir) / "predict.json") or {}).get("options")
    scheme = options.get("scheme") if isinstance(options, dict) else None
    return scheme if isinstance(scheme, str) and scheme in SCHEMES else None


def _run_task(task: _Task) -> tuple[str, dict[str, float] | None, str | None]:
    try:
        return task.case_id, evaluate_case_files(task), None
    except ValueError as exc:
        return task.case_id, None, str(exc)


@dataclass
class EvaluationResult:
    """What ``evaluate_folder`` computed and wrote.

    Attributes:
        rows: one dict per scored case (``case_id``, ``missing_prediction``, score columns).
        summary: the content of ``summary.json``.
        paths: files written, by name (``per_case``, ``summary``, ``markdown``; the figures'
            once ``glioseg.report.eval_figures.draw_evaluation_figures`` has drawn them).
        case_folders: case id -> reference case folder (what the overlays show).
        predictions: case id -> prediction file (None: missing, scored as empty).
        pred_label_scheme: label scheme of the predictions when it is not the reference's.
        pred_label_recorded: whether ``pred_label_scheme`` was read from the prediction
            folder's ``predict.json`` (``recorded_label_scheme``), not passed.
        ref_label_scheme: label scheme declared for the references (``--ref-labels``), or
            None (each case's layout's); the case folders are read in it.
    """

    rows: list[dict]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)
    case_folders: dict[str, Path] = field(default_factory=dict)
    predictions: dict[str, Path | None] = field(default_factory=dict)
    pred_label_scheme: str | None = None
    pred_label_recorded: bool = False
    ref_label_scheme: str | None = None


def summarise(rows: Sequence[dict], scheme: str) -> dict[str, dict[str, dict[str, float | None]]]:
    """mean, std (sample, ddof=1; None for one case), median, p25, p75 per metric and region."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric in metric_names(scheme):
        out[metric] = {}
        for region in REGION_NAMES:
            v = np.array([row[f"{region}_{metric}"] for row in rows], dtype=float)
            if v.size == 0:
                continue
            out[metric][region] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if v.size > 1 else None,
                "median": float(np.median(v)),
                "p25": float(np.percentile(v, 25)),
                "p75": float(np.percentile(v, 75)),
            }
    return out


_METRIC_TITLES = {"dice": "Dice", "hd95": "HD95", "sensitivity": "Sensitivity",
                  "specificity": "Specificity", "lesion_dice": "Lesion-wise Dice",
                  "lesion_hd95": "Lesion-wise HD95"}


def markdown_table(summary: dict) -> str:
    """A short Markdown table: mean ± std (median) per metric and region."""
    unit = "voxels" if summary["distance_unit"] == "voxel" else summary["distance_unit"]
    if summary.get("lesion_distance_unit", summary["distance_unit"]) != summary["distance_unit"]:
        unit += f" (lesion-wise: {summary['lesion_distance_unit']}, from the image spacing)"
    lines = [
        f"Scheme {summary['scheme']}, {summary['n_cases']} cases, distances in {unit}"
        + (f", {len(summary['missing_predictions'])} missing prediction(s) scored as empty"
           if summary["missing_predictions"] else "") + ".",
        "",
        "| metric | " + " | ".join(REGION_NAMES) + " |",
        "|---|" + "---|" * len(REGION_NAMES),
    ]
    for metric, per_region in summary["metrics"].items():
        digits = 2 if "hd95" in metric else 3
        cells = []
        for region in REGION_NAMES:
            s = per_region.get(region)
            if s is None:
                cells.append("")
                continue
            std = "" if s["std"] is None else f" ± {s['std']:.{digits}f}"
            cells.append(f"{s['mean']:.{digits}f}{std} ({s['median']:.{digits}f})")
        lines.append(f"| {_METRIC_TITLES.get(metric, metric)} | " + " | ".join(cells) + " |")
    counts = summary.get("lesion_counts")
    if counts:
        lines.append("| Lesions TP / FN / FP | " + " | ".join(
            f"{counts[r]['tp']} / {counts[r]['fn']} / {counts[r]['fp']}" for r in REGION_NAMES
        ) + " |")
    lines += ["", "Cells: mean ± sample std (median) over cases"
              + ("; lesion counts summed over cases" if counts else "") + ". "
              "An empty region on one side only scores Dice 0 and HD95 the grid's diagonal "
              "(373.13 voxels on the BraTS grid)"
              + ("; a missed lesion or a false positive, lesion-wise Dice 0 and HD95 374"
                 if counts else "") + "."]
    return "\n".join(lines) + "\n"


def lesion_counts(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Lesion true positives, false negatives and false positives per region, summed."""
    return {
        region: {k: int(sum(int(row[f"{region}_lesion_{k}"]) for row in rows))
                 for k in ("tp", "fn", "fp")}
        for region in REGION_NAMES
    }


def _csv_text(rows: Sequence[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _plan(
    pred_dir: Path, ref_dir: Path, scheme: str | None, spacing_mm: bool,
    pred_label_scheme: str | None, ref_label_scheme: str | None = None,
) -> tuple[list[_Task], str, list, dict[str, list[str]]]:
    from glioseg.data.cases import discover

    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder")
    cases = discover(ref_dir, ref_label_scheme)
    layouts = sorted({c.layout for c in cases})
    if scheme is None:
        schemes = {scoring_scheme_for(lay) for lay in layouts}
        if len(schemes) > 1:
            raise EvaluationError(f"{ref_dir}: cases of layouts {layouts} call for different "
                                  "scoring schemes; choose one with --scheme")
        scheme = schemes.pop()
    check_scheme(scheme)
    scored = [c for c in cases if c.seg is not None]
    lists: dict[str, list[str]] = {
        "unscored_cases": [c.case_id for c in cases if c.seg is None],
        "missing_predictions": [],
    }
    if not scored:
        raise EvaluationError(f"{ref_dir}: no case has a reference segmentation to score against")
    tasks = []
    for case in scored:
        pred = find_prediction(pred_dir, case.case_id)
        if pred is None:
            lists["missing_predictions"].append(case.case_id)
        tasks.append(_Task(case.case_id, case.seg, pred, case.label_scheme, pred_label_scheme,
                           scheme, spacing_mm))
    ids = {c.case_id for c in cases}
    # hidden files are not predictions: a predict killed mid-write leaves its temporary
    # (``.<case>.nii.gz.<random>.tmp.nii.gz``) beside the finished ones
    lists["unmatched_predictions"] = sorted(
        p.name for p in pred_dir.iterdir()
        if p.name.endswith(PRED_EXTS) and not p.name.startswith(".")
        and p.name.split(".nii")[0] not in ids
    )
    if len(lists["missing_predictions"]) == len(tasks):  # surely a naming or folder mistake
        found = lists["unmatched_predictions"]
        raise EvaluationError(
            f"{pred_dir}: no prediction matches a reference case of {ref_dir}; expected files "
            f"named <case_id>.nii.gz, e.g. {tasks[0].case_id}.nii.gz; found "
            + (f"{len(found)} other NIfTI file(s): {', '.join(found[:3])}"
               + (", ..." if len(found) > 3 else "") if found else "no NIfTI file")
        )
    return tasks, scheme, scored, lists


def _score_tasks(tasks: list[_Task], workers: int, progress: bool) -> dict[str, dict[str, float]]:
    """Scores by case id, in ``workers`` processes; raises listing every case that failed."""
    from tqdm import tqdm

    results: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress)
    with ExitStack() as stack:
        if workers <= 1 or len(tasks) == 1:
            outcomes = map(_run_task, tasks)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            futures = [pool.submit(_run_task, t) for t in tasks]
            outcomes = (f.result() for f in as_completed(futures))
        for case_id, scores, error in outcomes:
            results[case_id] = scores or {}
            if error:
                problems.append(error)
            bar.update()
    bar.close()
    if problems:
        hint = ""
        if any(": prediction " in p and "are not allowed in the" in p for p in problems):
            from glioseg.data.labels import SCHEMES

            hint = ("\nif the predictions are written in another label scheme, name it with "
                    f"--pred-labels ({', '.join(SCHEMES)})")
        ref_3 = re.compile(r": reference .*labels \[3\] are not allowed in the "
                           r"(brats2020|brats2021) scheme")
        if any(ref_3.search(p) for p in problems):
            from glioseg.data.labels import et_as_3_hint

            hint += f"\nreferences: {et_as_3_hint('--ref-labels')}"
        raise EvaluationError(f"{len(problems)} case(s) could not be scored:\n"
                              + "\n".join(sorted(problems)) + hint)
    return results


def _write_tables(out_dir: Path, tasks: list[_Task], rows: list[dict], scheme: str,
                  spacing_mm: bool, lists: dict[str, list[str]]) -> tuple[dict, dict[str, Path]]:
    """Write ``per_case.csv``, ``summary.json``, ``summary.md``: the summary, the paths by name."""
    summary = {
        "format": "glioseg-eval/1",
        "scheme": scheme,
        "label_schemes": sorted({t.label_scheme for t in tasks}),
        "distance_unit": "mm" if spacing_mm else "voxel",
        **({"lesion_distance_unit": "mm"} if scheme == "brats2023" else {}),
        "n_cases": len(rows),
        **lists,
        "metrics": summarise(rows, scheme),
        **({"lesion_counts": lesion_counts(rows)} if scheme == "brats2023" else {}),
    }
    columns = ["case_id", "missing_prediction"] + score_columns(scheme)
    return summary, {
        "per_case": io_atomic.write_text(out_dir / "per_case.csv", _csv_text(rows, columns)),
        "summary": io_atomic.write_text(out_dir / "summary.json",
                                     json.dumps(summary, indent=2) + "\n"),
        "markdown": io_atomic.write_text(out_dir / "summary.md", markdown_table(summary)),
    }


def evaluate_folder(
    pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path, scheme: str | None = None,
    spacing_mm: bool = False, workers: int = 1, pred_label_scheme: str | None = None,
    progress: bool = True, ref_label_scheme: str | None = None,
) -> EvaluationResult:
    """Score every reference case that has a segmentation; write the tables.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` predictions (file labels).
        ref_dir: a BraTS/MSD data folder (``glioseg.data.cases.discover``).
        out_dir: where ``per_case.csv``, ``summary.json`` and ``summary.md`` go.
        scheme: ``brats2020`` or ``brats2023``; default from the reference layout.
        spacing_mm: legacy distances in mm using the reference's spacing (default: voxel
            units); lesion-wise scores always use it (as the 2023 reference code).
        workers: parallel processes.
        pred_label_scheme: label convention of the predictions; default: the one
            ``pred_dir/predict.json`` records (``glioseg predict --scheme``), else the
            reference's.
        progress: show a progress bar.
        ref_label_scheme: label scheme of the reference segmentations (``brats2020``,
            ``brats2021``, ``brats2023``, ``msd``), overriding their layout's; None: the
            layout's. The scoring scheme still follows the layout.

    Raises:
        EvaluationError: if any case cannot be scored (all problems listed, each naming the
            case and file); nothing is written then.
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    recorded = pred_label_scheme is None and pred_dir.is_dir()
    if recorded:
        pred_label_scheme = recorded_label_scheme(pred_dir)
        recorded = pred_label_scheme is not None
    tasks, scheme, cases, lists = _plan(pred_dir, ref_dir, scheme, spacing_mm, pred_label_scheme,
                                        ref_label_scheme)
    remove_leftover_temporaries(out_dir)  # tables half-written by a killed run
    results = _score_tasks(tasks, workers, progress)
    missing = set(lists["missing_predictions"])
    rows = [{"case_id": t.case_id, "missing_prediction": int(t.case_id in missing),
             **results[t.case_id]} for t in tasks]
    summary, paths = _write_tables(out_dir, tasks, rows, scheme, spacing_mm, lists)
    return EvaluationResult(rows, summary, paths, {c.case_id: c.folder for c in cases},
                            {t.case_id: t.pred for t in tasks}, pred_label_scheme, recorded,
                            ref_label_scheme)

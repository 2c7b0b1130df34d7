"""``predict_dir``: every case of a folder predicted into another, resumable, with the reading
and writing of NIfTI files beside the model's work.

Per case: read (``load_for_model``) and prepare (``CasePredictor.prepare``: orientation, crop,
z-score) on a reader thread, the network and the labels on the model's device
(``CasePredictor.run``) in the calling thread, the NIfTI files written on a writer thread
(``glioseg.infer.pipeline``; ``PredictOptions.prefetch`` cases ahead, 0 = one step after the
other; the files are the same bytes either way). Cases already predicted are skipped (the
folder's ``predict.json`` must name the same models, by digest, and the same label-changing
options), each file is written atomically, a failing case is reported and skipped while the
others go on; the returned ``PredictSummary`` says which failed and how many cases a minute
went through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.data.labels import MODALITIES
from glioseg.infer.cards import PredictError, card_allows_missing
from glioseg.infer.predict import CasePredictor, PredictOptions, check_cards, check_model_path
from glioseg.io_atomic import remove_leftover_temporaries, write_json
from glioseg.records import read_json_object


def resolved_paths(paths: Sequence[str | Path]) -> list[str]:
    """Absolute paths, symbolic links resolved: how ``predict.json`` names the models, so a
    re-run with a relative ``--model`` from another working folder is recognised."""
    return [str(Path(p).resolve()) for p in paths]


RESULT_OPTIONS = ("engine", "device", "dtype", "mode", "roi", "overlap", "tta", "threshold",
                  "et_min_voxels", "min_component", "min_size_mm3", "scheme")
"""The options that change the labels: a folder predicted with others is not resumed."""


def _check_same_settings(out_dir: Path, model_paths: Sequence[str | Path],
                         opts: PredictOptions, digests: Sequence[str] | None = None) -> None:
    """Refuse to add to ``out_dir`` predictions made with other models or options (its
    ``predict.json``), so that skipping finished cases never mixes two settings.

    Models are compared by ``digests`` (sha256 of weights and card, ``model_digest``) when
    the record has them: a folder retrained in place is another model, a copy of the same
    model elsewhere is not. Older records without digests are compared by path."""
    record = out_dir / "predict.json"
    if not record.is_file():
        return
    try:
        before = json.loads(record.read_text())
    except ValueError:
        raise PredictError(f"{record}: unreadable; use another --output or --overwrite") from None
    now = opts.to_dict()
    diffs = []
    # predict.json stores resolved paths (older records may hold paths relative to the
    # folder they were run from: resolved here against this one, the best guess left)
    models = resolved_paths(model_paths)
    if digests is not None and "model_digests" in before:
        if list(before["model_digests"]) != list(digests):
            diffs.append(f"models {before.get('models')} -> {models} (weights or card "
                         f"differ: sha256 {[d[:12] for d in before['model_digests']]} -> "
                         f"{[d[:12] for d in digests]})")
    elif resolved_paths(before.get("models", [])) != models:
        diffs.append(f"models {before.get('models')} -> {models}")
    for key in RESULT_OPTIONS:
        old = before.get("options", {}).get(key)
        new = list(now[key]) if isinstance(now[key], tuple) else now[key]
        if old != new:
            diffs.append(f"{key} {old!r} -> {new!r}")
    if diffs:
        raise PredictError(f"{out_dir} holds predictions made with other settings ("
                           f"{'; '.join(diffs)}); use another --output, or --overwrite to "
                           "predict every case again")



def load_for_model(case, modalities: Sequence[str], allow_missing: bool):
    """Image ``(4, X, Y, Z)`` float32 (MODALITIES order) and header of a case on disk.

    A sequence the model needs but the case lacks is an error naming the case and the file,
    unless ``allow_missing`` (the card allows it): then it is zeros, as in modality dropout.
    """
    from glioseg.data.cases import CaseError, load_case
    from glioseg.data.nifti import NiftiError, load_volume

    if not case.missing:
        data = load_case(case, with_labels=False)
        return data.image, data.header
    needed = [m for m in case.missing if m in modalities]
    if needed and not allow_missing:
        files = ", ".join(case.expected_file(m) for m in needed)
        raise CaseError(f"{case.case_id}: missing sequence {', '.join(needed)} (no {files} in "
                        f"{case.folder}); the model needs {', '.join(modalities)} and its card "
                        "does not allow a missing sequence")
    vols: dict[str, np.ndarray] = {}
    header = None
    for m in MODALITIES:
        if m not in case.images:
            continue
        try:
            vol, h = load_volume(case.images[m], dtype=np.float32)
        except NiftiError as exc:
            raise CaseError(f"{case.case_id}: {exc}") from None
        if vol.ndim != 3 or (header is not None and vol.shape != header.shape[:3]):
            raise CaseError(f"{case.case_id}: {case.images[m].name}: shape {vol.shape} differs "
                            "from the other sequences")
        if not np.isfinite(vol).all():
            raise CaseError(f"{case.case_id}: {case.images[m].name}: NaN/inf voxels")
        vols[m] = vol
        header = header or h
    if header is None:
        raise CaseError(f"{case.case_id}: no sequence found in {case.folder}")
    shape = header.shape[:3]
    image = np.stack([vols.get(m, np.zeros(shape, np.float32)) for m in MODALITIES])
    return image, header


@dataclass
class PredictSummary:
    """What ``predict_dir`` did: case ids predicted, skipped (already done) and failed."""

    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0  # the whole call, models loaded to the last file written

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def cases_per_minute(self) -> float | None:
        """Cases predicted per minute of the whole call (None when none was)."""
        if not self.predicted or self.wall_seconds <= 0:
            return None
        return 60.0 * len(self.predicted) / self.wall_seconds


def output_scheme(asked: str | None, case_scheme: str | None, card: Any) -> str | None:
    """Label scheme of a case's output: the one asked for, else the input's, else the card's.

    The input's convention comes before the card's: a model trained on BraTS 2023 files
    (labels 1/2/3) that segments BraTS 2021 cases writes 1/2/4, as the cases' own files.
    """
    from glioseg.data.labels import SCHEMES

    if asked:
        return asked
    if case_scheme in SCHEMES:
        return case_scheme
    return getattr(card, "label_scheme", None)


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """``(<case_id>.nii.gz, <case_id>_probabilities.nii.gz)`` in ``out_dir``."""
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_probabilities.nii.gz"


def probabilities_for_file(probabilities: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` probabilities -> ``(X, Y, Z, 3)`` float32 holding float16 values.

    NIfTI-1 has no float16 data type (nibabel refuses it), so the file is float32; rounding
    the values to float16 first (11-bit mantissa, ample for probabilities) makes the gzip
    stream several times smaller than full float32 values would.
    """
    return np.moveaxis(probabilities, 0, -1).astype(np.float16).astype(np.float32)





def _check_input(input_path: str | Path) -> None:
    """A file given for ``-i`` (a case's NIfTI file): say what to give instead."""
    path = Path(input_path)
    if path.is_file():
        raise PredictError(f"{path} is a file; --input takes a data folder or one case folder"
                           f" (e.g. {path.parent}, the folder holding it)")


def _with_earlier(earlier: dict[str, Any], summary: PredictSummary, out_dir: Path
                  ) -> tuple[list[str], dict[str, float]]:
    """Cases predicted with these settings so far, and their seconds: the earlier runs'
    (whose outputs are still there and were not predicted again or failed now), then this
    run's. A re-run that skips every case keeps the earlier record."""
    now = set(summary.predicted) | set(summary.failed)
    before = [c for c in earlier.get("predicted", []) if isinstance(c, str) and c not in now
              and output_paths(out_dir, c)[0].is_file()]
    old_seconds = earlier.get("seconds", {}) if isinstance(earlier.get("seconds"), dict) else {}
    seconds = {c: old_seconds[c] for c in before if c in old_seconds}
    seconds.update(summary.seconds)
    return before + summary.predicted, seconds


def _split_done(cases: list, out_dir: Path, opts: PredictOptions, summary: PredictSummary) -> list:
    """The cases still to predict; the others go to ``summary.skipped``."""
    todo = []
    for case in cases:
        labels_path, prob_path = output_paths(out_dir, case.case_id)
        done = labels_path.is_file() and (not opts.probabilities or prob_path.is_file())
        if done and not opts.overwrite:
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    return todo


def _remove_old_outputs(out_dir: Path, todo: list) -> None:
    """Every case is predicted again: its old outputs go first (before predict.json names the
    new settings), so a case that now fails, or is not reached before a kill, never keeps an
    output of the old model."""
    from glioseg.io_atomic import fsync_dir

    for case in todo:
        for path in output_paths(out_dir, case.case_id):
            path.unlink(missing_ok=True)
    if out_dir.is_dir():
        fsync_dir(out_dir)


def _failure(case, exc: Exception) -> str:
    msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return msg if case.case_id in msg else f"{case.case_id}: {msg}"


def _predict_cases(predictor: CasePredictor, todo: list, out_dir: Path, opts: PredictOptions,
                   summary: PredictSummary, progress: bool) -> None:
    """Read, predict and write ``todo`` (``glioseg.infer.pipeline``), filling ``summary``."""
    from tqdm import tqdm

    from glioseg.data.nifti import save_volume
    from glioseg.infer.pipeline import run_overlapped

    allow = card_allows_missing(predictor.card)
    bar = tqdm(total=len(todo), desc="cases", unit="case", disable=not progress)

    def read(case):
        image, header = load_for_model(case, predictor.modalities, allow)
        return header, predictor.prepare(image, header.spacing, header.affine)

    def compute(case, loaded):
        header, prepared = loaded
        bar.set_postfix_str(case.case_id)
        scheme = output_scheme(opts.scheme, case.label_scheme, predictor.card)
        return header, predictor.run(prepared, scheme, with_probabilities=opts.probabilities)

    def write(case, computed):
        header, result = computed
        labels_path, prob_path = output_paths(out_dir, case.case_id)
        if result.probabilities is not None:
            save_volume(prob_path, probabilities_for_file(result.probabilities), header.affine,
                        np.float32, like=header)
        save_volume(labels_path, result.labels, header.affine, np.uint8, like=header)

    def done(case, exc: Exception | None, seconds: float) -> None:
        bar.update(1)
        if exc is not None:
            summary.failed[case.case_id] = _failure(case, exc)
            return
        summary.predicted.append(case.case_id)
        summary.seconds[case.case_id] = round(seconds, 3)

    try:
        run_overlapped(todo, read, compute, write, done, ahead=max(0, int(opts.prefetch)))
    finally:
        bar.close()


def predict_dir(
    model_paths: Sequence[str | Path],
    input_path: str | Path,
    output_dir: str | Path,
    options: PredictOptions | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Predict every case found under ``input_path`` into ``output_dir``.

    Args:
        model_paths: checkpoints (folders or ``.safetensors``); several are ensembled.
        input_path: a data folder or one case folder, any layout ``discover`` knows.
        output_dir: gets ``<case_id>.nii.gz`` (labels in ``options.scheme``, else the case's
            own scheme, so that ``glioseg evaluate`` reads them in the reference's convention,
            else the card's ``label_scheme``; uint8, the input's grid and affine), optionally
            ``<case_id>_probabilities.nii.gz`` (``(X, Y, Z, 3)`` WT, TC, ET; see
            ``probabilities_for_file``), and
            ``predict.json`` (options with ``dtype`` resolved, checkpoints as absolute paths,
            per-case status: ``predicted`` every case predicted with these settings so far,
            earlier runs' included, so a re-run that skips every case keeps the list;
            ``skipped`` and ``failed`` this run's; written again after Ctrl-C, so it lists
            every file on disk), ``timings.json`` and ``hardware.json`` (``glioseg.runinfo``:
            this call's wall seconds, cases per minute, the machine).
        progress: a progress bar over cases, and a last line with cases per minute.

    Returns:
        ``PredictSummary``; a case that fails is recorded with its message, the others go on.

    Raises:
        PredictError: a model path that is a training run folder, a checkpoint or an exported
            network (saying what to pass), an input that is a file, models of an ensemble
            trained on different inputs (naming both and the difference).
    """
    from glioseg.data.cases import discover
    from glioseg.model.card import load_model_and_digest
    from glioseg.runinfo import record_run

    started = time.perf_counter()
    opts = (options or PredictOptions()).resolved()
    out_dir = Path(output_dir)
    _check_input(input_path)
    cases = discover(input_path)
    for path in model_paths:
        check_model_path(path)
    loaded = [load_model_and_digest(p) for p in model_paths]  # the resume key: what was read
    models = [(m.eval(), c) for m, c, _ in loaded]
    digests = [d for _, _, d in loaded]
    names = [str(p) for p in model_paths]
    check_cards(models, names)
    if not opts.overwrite:
        _check_same_settings(out_dir, model_paths, opts, digests)
    # the predict.json of an earlier run with the same settings (checked above)
    earlier = {} if opts.overwrite else read_json_object(out_dir / "predict.json") or {}
    summary = PredictSummary()
    remove_leftover_temporaries(out_dir)  # outputs half-written by a killed run
    todo = _split_done(cases, out_dir, opts, summary)

    def record() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        predicted, seconds = _with_earlier(earlier, summary, out_dir)
        write_json(out_dir / "predict.json", {
            "models": resolved_paths(model_paths), "model_digests": digests,
            "input": str(input_path), "options": opts.to_dict(),
            "predicted": predicted, "skipped": summary.skipped,
            "failed": summary.failed, "seconds": seconds,
        }, indent=2)

    if todo:
        if opts.overwrite:
            _remove_old_outputs(out_dir, todo)
        record()  # the settings on disk before the first file, for a resume after a kill
        predictor = CasePredictor(models, opts, names)
        try:
            _predict_cases(predictor, todo, out_dir, opts, summary, progress)
        except KeyboardInterrupt:
            record()  # what is on disk, for the re-run that goes on
            raise
        finally:
            predictor.close()
    record()
    summary.wall_seconds = time.perf_counter() - started
    _report(out_dir, summary, progress, record_run)
    return summary


def _report(out_dir: Path, summary: PredictSummary, progress: bool, record_run) -> None:
    """``timings.json`` / ``hardware.json``, and the cases-per-minute line under the bar; a
    re-run that predicted nothing (every case done) keeps the run's earlier records."""
    if not summary.predicted and not summary.failed:
        return
    seconds = list(summary.seconds.values())
    rate = summary.cases_per_minute
    record_run(out_dir, "predict", summary.wall_seconds,
               **{"cases predicted": len(summary.predicted),
                  "cases skipped": len(summary.skipped), "cases failed": len(summary.failed),
                  "mean seconds per predicted case": round(sum(seconds) / len(seconds), 3)
                  if seconds else None,
                  "cases per minute": round(rate, 2) if rate else None})
    if progress and rate:
        from tqdm import tqdm

        tqdm.write(f"{len(summary.predicted)} cases in {summary.wall_seconds:.1f} s: "
                   f"{rate:.1f} cases per minute")

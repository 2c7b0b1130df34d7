"""``glioseg preprocess``: build the cache of a data folder, in parallel, resumable.

Each case is loaded (``glioseg.data.cases.load_case``), preprocessed by the pure
``preprocess_arrays`` and written atomically by ``cache.write_case``. Re-running skips the cases
already written; temporary folders left by an interrupted run are removed; a bad case is
reported and the others go on; ``dataset.json`` is written last.

``modalities`` (``glioseg preprocess DIR -o CACHE --modalities t2,t1``) builds the cache of a
site with fewer sequences: only those are required and read; the other channels are zeros and
each case's ``meta.json`` lists the channels that hold data (see ``glioseg.preprocess.cache``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from glioseg.data.cases import Case, discover, load_case, selected_modalities
from glioseg.data.labels import MODALITIES
from glioseg.errors import GliosegError
from glioseg.io_atomic import remove_leftover_temporaries, write_json
from glioseg.preprocess import cache as cache_io
from glioseg.preprocess.pure import PreprocessError, preprocess_arrays


class PreprocessFailed(GliosegError, ValueError):
    """Some cases could not be preprocessed; the message lists each case and its problem."""


def preprocess_case(case: Case, cache_dir: Path, spacing: float | None,
                    modalities: Sequence[str] | None = None) -> Path:
    """Load, preprocess and write one case into ``cache_dir/<case_id>``.

    ``modalities``: the sequences to read (default all four); the others are zero channels.

    Raises:
        ValueError: (``CaseError``, ``PreprocessError``) naming the case and the problem.
    """
    data = load_case(case, modalities=modalities)
    try:
        image, labels, geometry = preprocess_arrays(data.image, data.labels,
                                                    data.header.spacing, spacing)
    except ValueError as exc:
        raise PreprocessError(f"{case.case_id}: {exc}") from None
    meta = {
        "case_id": case.case_id,
        "layout": case.layout,
        "original_affine": data.header.affine.tolist(),
        "modalities": list(data.modalities),
        **geometry,
    }
    return cache_io.write_case(cache_dir, case.case_id, image, labels, meta)


def _worker(case: Case, cache_dir: Path, spacing: float | None,
            modalities: Sequence[str] | None = None) -> tuple[str, str | None]:
    """Run ``preprocess_case``; return (case id, None) or (case id, error message)."""
    try:
        preprocess_case(case, cache_dir, spacing, modalities)
    except Exception as exc:  # one bad case must not stop the others
        msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        if case.case_id not in msg:
            msg = f"{case.case_id}: {msg}"
        return case.case_id, msg
    return case.case_id, None


SETTINGS = "preprocess.json"
"""Written before the first case: the settings every case of the cache is built with, so a
run killed before ``dataset.json`` still refuses to be resumed with other settings."""


def _check_existing(cache_dir: Path, spacing: float | None, modalities: Sequence[str]) -> None:
    """Refuse to add cases at another spacing or with other sequences to an existing cache
    (one that holds no finished case yet, e.g. after a run whose every case failed, may change);
    then record this run's settings in ``SETTINGS``."""
    want = {"spacing": None if spacing is None else [float(spacing)] * 3,
            "selected_modalities": list(modalities)}
    has_cases = any(cache_io.case_is_complete(d) for d in cache_dir.iterdir() if d.is_dir())
    recorded = None
    for name in (SETTINGS, "dataset.json"):
        if has_cases and (cache_dir / name).is_file():
            recorded = cache_io.read_dataset_json(cache_dir) if name == "dataset.json" else \
                json.loads((cache_dir / name).read_text())
            break
    if recorded is not None:
        if recorded.get("spacing") != want["spacing"]:
            raise cache_io.CacheError(f"{cache_dir}: cache was built with spacing "
                               f"{recorded.get('spacing')}, not {want['spacing']}; use another "
                               "output folder")
        had = list(recorded.get("selected_modalities", MODALITIES))
        if had != want["selected_modalities"]:
            raise cache_io.CacheError(f"{cache_dir}: cache was built with the sequences "
                               f"{','.join(had)}, not {','.join(modalities)}; use another "
                               "output folder")
    write_json(cache_dir / SETTINGS, want)


def preprocess_dir(
    data_dir: str | Path, output: str | Path, spacing: float | None = None, workers: int = 1,
    modalities: str | Sequence[str] | None = None,
) -> list[str]:
    """Preprocess every case of ``data_dir`` into the cache folder ``output``.

    Args:
        data_dir: a BraTS / MSD data folder (see ``glioseg.data.cases.discover``).
        output: cache folder (created).
        spacing: isotropic voxel size (mm) to resample to; None keeps each case's grid.
        workers: parallel processes (1: in this process).
        modalities: the sequences to use (e.g. ``"t2,t1"``); a case needs only those and the
            other channels are stored as zeros. Default: all four.

    Returns:
        The case ids in the cache.

    Raises:
        CaseError: no cases found. PreprocessFailed: after writing the others and
        ``dataset.json`` (which lists only the good cases), if any case failed.
    """
    data_dir, output = Path(data_dir), Path(output)
    chosen = selected_modalities(modalities)
    cases = discover(data_dir)
    output.mkdir(parents=True, exist_ok=True)
    _check_existing(output, spacing, chosen)
    remove_leftover_temporaries(output)
    todo = [c for c in cases if not cache_io.case_is_complete(output / c.case_id)]
    done = {c.case_id for c in cases} - {c.case_id for c in todo}
    if done:
        print(f"{len(done)} of {len(cases)} cases already in {output}; skipping them",
              file=sys.stderr)
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not todo)
    if workers <= 1 or len(todo) <= 1:
        results = (_worker(c, output, spacing, chosen) for c in todo)
        _collect(results, done, failures, bar)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, c, output, spacing, chosen) for c in todo]
            _collect((f.result() for f in as_completed(futures)), done, failures, bar)
    bar.close()
    ids = [c.case_id for c in cases if c.case_id in done]
    write_json(output / "dataset.json", {
        "format": cache_io.CACHE_FORMAT,
        "modalities": list(MODALITIES),
        "selected_modalities": list(chosen),
        "spacing": None if spacing is None else [float(spacing)] * 3,
        "cases": ids,
        "source": str(data_dir.resolve()),
    })
    if failures:
        lines = "\n".join(f"  {msg}" for _, msg in sorted(failures.items()))
        hint = ""
        if modalities is None and any("missing modality" in m for m in failures.values()):
            hint = ("\nto use cases that have only some sequences, name the ones to use, "
                    "e.g. --modalities t2,t1")
        raise PreprocessFailed(f"{len(failures)} of {len(cases)} cases failed (the other "
                               f"{len(ids)} are in {output}):\n{lines}{hint}")
    return ids


def _collect(results, done: set[str], failures: dict[str, str], bar: tqdm) -> None:
    for cid, err in results:
        if err is None:
            done.add(cid)
        else:
            failures[cid] = err
            tqdm.write(f"failed: {err}", file=sys.stderr)
        bar.update(1)

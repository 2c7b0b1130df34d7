"""``glioseg preprocess``: build the cache of a data folder, in parallel, resumable.

Each case is loaded (``glioseg.data.cases.load_case``), preprocessed by the pure
``preprocess_arrays`` and written atomically by ``cache.write_case``. Re-running skips the cases
already written; temporary folders left by an interrupted run are removed; a bad case is
reported and the others go on; ``dataset.json`` is written last.

``modalities`` (``glioseg preprocess DIR -o CACHE --modalities t2,t1``) builds the cache of a
site with fewer sequences: only those are required and read; the other channels are zeros and
each case's ``meta.json`` lists the channels that hold data (see ``glioseg.preprocess.cache``).

``label_scheme`` (``--labels brats2023``) declares the label scheme of the segmentations,
overriding their layout's (BraTS 2021 file names with nnU-Net's 0/1/2/3 labels); the cache holds
internal labels either way. It is a setting of the cache like the spacing: recorded in
``preprocess.json`` and ``dataset.json`` (``"labels"``, null when not declared), and a re-run
with another value is refused. Each case's ``meta.json`` records the scheme its labels were
read in (``label_scheme``).
"""

from __future__ import annotations

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
from glioseg.records import read_json_object


class PreprocessFailed(GliosegError, ValueError):
    """Some cases could not be preprocessed; the message lists each case and its problem."""


def preprocess_case(case: Case, cache_dir: Path, spacing: float | None,
                    modalities: Sequence[str] | None = None, source: str | None = None) -> Path:
    """Load, preprocess and write one case into ``cache_dir/<case_id>``.

    ``modalities``: the sequences to read (default all four); the others are zero channels.
    ``source``: the data folder the case comes from, recorded in its ``meta.json``.

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
        "label_scheme": case.label_scheme,
        "original_affine": data.header.affine.tolist(),
        "modalities": list(data.modalities),
        **({"source": source} if source else {}),
        **geometry,
    }
    return cache_io.write_case(cache_dir, case.case_id, image, labels, meta)


def _worker(case: Case, cache_dir: Path, spacing: float | None,
            modalities: Sequence[str] | None = None,
            source: str | None = None) -> tuple[str, str | None]:
    """Run ``preprocess_case``; return (case id, None) or (case id, error message)."""
    try:
        preprocess_case(case, cache_dir, spacing, modalities, source)
    except Exception as exc:  # one bad case must not stop the others
        msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        if case.case_id not in msg:
            msg = f"{case.case_id}: {msg}"
        return case.case_id, msg
    return case.case_id, None


SETTINGS = "preprocess.json"
"""Written before the first case: the settings every case of the cache is built with and the
source folders its cases come from, so a run killed before ``dataset.json`` still refuses to be
resumed with other settings or from another folder."""


def _sources(doc: dict | None) -> list[str]:
    """The source folders a ``dataset.json`` / ``SETTINGS`` records (older ones: one or none)."""
    if not doc:
        return []
    if isinstance(doc.get("sources"), list):
        return [str(s) for s in doc["sources"]]
    return [str(doc["source"])] if doc.get("source") else []


def _check_existing(cache_dir: Path, spacing: float | None, modalities: Sequence[str],
                    source: str, case_ids: Sequence[str], add: bool = False,
                    label_scheme: str | None = None) -> dict[str, str]:
    """Refuse to add cases at another spacing, with other sequences, another declared label
    scheme or (unless ``add``) from another source folder to an existing cache (one that holds no finished case yet, e.g. after
    a run whose every case failed, may change), and cases whose ids the cache holds from
    another folder; then record this run's settings in ``SETTINGS``.

    Returns:
        The cases ``dataset.json`` lists from other source folders (kept in the cache): case
        id -> source folder.
    """
    want = {"spacing": None if spacing is None else [float(spacing)] * 3,
            "selected_modalities": list(modalities), "labels": label_scheme}
    has_cases = any(cache_io.case_is_complete(d) for d in cache_dir.iterdir() if d.is_dir())
    recorded, sources = None, []
    if has_cases:
        settings = read_json_object(cache_dir / SETTINGS) if (cache_dir / SETTINGS).is_file() else None
        dataset = (cache_io.read_dataset_json(cache_dir)
                   if (cache_dir / "dataset.json").is_file() else None)
        recorded = settings if settings is not None else dataset
        sources = list(dict.fromkeys(_sources(dataset) + _sources(settings)))
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
        if recorded.get("labels") != label_scheme:
            raise cache_io.CacheError(
                f"{cache_dir}: cache was built {_labels_text(recorded.get('labels'))}, not "
                f"{_labels_text(label_scheme)}; pass the same --labels, or use another output "
                "folder")
    if sources and source not in sources and not add:
        raise cache_io.CacheError(
            f"{cache_dir}: cache was built from {', '.join(sources)}, not {source}; write to "
            f"another output folder (-o), delete {cache_dir} to rebuild it from {source}, or "
            f"add these cases to it with `glioseg preprocess {source} -o {cache_dir} --add`")
    old = read_json_object(cache_dir / "dataset.json") or {}
    default = old.get("source") if len(_sources(old)) <= 1 else None  # written before "sources"
    clash = [cid for cid in case_ids if cache_io.case_is_complete(cache_dir / cid)
             and _case_source(cache_dir / cid, default) not in (None, source)]
    if clash:
        shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        raise cache_io.CacheError(
            f"{cache_dir}: {len(clash)} case ids of {source} are already in the cache from "
            f"another folder ({shown}); write to another output folder (-o)")
    write_json(cache_dir / SETTINGS, {**want, "sources": list(dict.fromkeys([*sources, source]))})
    kept = {cid: _case_source(cache_dir / cid, default) for cid in old.get("cases", [])
            if isinstance(cid, str) and cid not in case_ids
            and cache_io.case_is_complete(cache_dir / cid)}
    return {cid: src for cid, src in kept.items() if src not in (None, source)}


def _labels_text(label_scheme: object) -> str:
    """How a refusal names a cache's declared label scheme (``--labels``)."""
    if label_scheme is None:
        return "without --labels (each layout's label scheme)"
    return f"with --labels {label_scheme}"


def _case_source(folder: Path, default: str | None) -> str | None:
    """The source folder ``meta.json`` records for a cached case (``default`` when older)."""
    meta = read_json_object(folder / "meta.json") or {}
    return str(meta["source"]) if meta.get("source") else default


def preprocess_dir(
    data_dir: str | Path, output: str | Path, spacing: float | None = None, workers: int = 1,
    modalities: str | Sequence[str] | None = None, add: bool = False,
    label_scheme: str | None = None,
) -> list[str]:
    """Preprocess every case of ``data_dir`` into the cache folder ``output``.

    Args:
        data_dir: a BraTS / MSD data folder (see ``glioseg.data.cases.discover``).
        output: cache folder (created).
        spacing: isotropic voxel size (mm) to resample to; None keeps each case's grid.
        workers: parallel processes (1: in this process).
        modalities: the sequences to use (e.g. ``"t2,t1"``); a case needs only those and the
            other channels are stored as zeros. Default: all four.
        add: add the cases of ``data_dir`` to a cache built from other folders (each case's
            ``meta.json`` records its source; ``dataset.json`` lists them all, ``"sources"``
            the folders). Without it, a cache built from another folder is refused.
        label_scheme: the label scheme of the segmentation files (``brats2020``,
            ``brats2021``, ``brats2023``, ``msd``), overriding their layout's; None: the
            layout's. A cache built with another value is refused.

    Returns:
        The case ids in the cache.

    Raises:
        CaseError: no cases found. LabelError: an unknown ``label_scheme``.
        CacheError: a cache built with other settings (spacing, sequences, labels), from another
        folder (without ``add``), or holding a case of the same id from another folder.
        PreprocessFailed: after writing the others and ``dataset.json`` (which lists only the
        good cases), if any case failed.
    """
    data_dir, output = Path(data_dir), Path(output)
    chosen = selected_modalities(modalities)
    cases = discover(data_dir, label_scheme)
    output.mkdir(parents=True, exist_ok=True)
    source = str(data_dir.resolve())
    kept = _check_existing(output, spacing, chosen, source, [c.case_id for c in cases], add,
                           label_scheme)
    listed_sources = _sources(read_json_object(output / "dataset.json"))
    remove_leftover_temporaries(output)
    todo = [c for c in cases if not cache_io.case_is_complete(output / c.case_id)]
    done = {c.case_id for c in cases} - {c.case_id for c in todo}
    if done:
        print(f"{len(done)} of {len(cases)} cases already in {output}; skipping them",
              file=sys.stderr)
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not todo)
    if workers <= 1 or len(todo) <= 1:
        results = (_worker(c, output, spacing, chosen, source) for c in todo)
        _collect(results, done, failures, bar)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, c, output, spacing, chosen, source)
                       for c in todo]
            _collect((f.result() for f in as_completed(futures)), done, failures, bar)
    bar.close()
    ids = [c.case_id for c in cases if c.case_id in done]
    # one source's cases after another's, in the order the cache first listed the sources: a
    # re-run from any of them keeps the order of the cases (and so the training split)
    sources = list(dict.fromkeys([*(s for s in listed_sources
                                    if s == source or s in kept.values()),
                                  *kept.values(), source]))
    listed = [cid for src in sources
              for cid in (ids if src == source else [k for k, v in kept.items() if v == src])]
    write_json(output / "dataset.json", {
        "format": cache_io.CACHE_FORMAT,
        "modalities": list(MODALITIES),
        "selected_modalities": list(chosen),
        "spacing": None if spacing is None else [float(spacing)] * 3,
        "labels": label_scheme,
        "cases": listed,
        "source": sources[0],
        "sources": sources,
    })
    if failures:
        lines = "\n".join(f"  {msg}" for _, msg in sorted(failures.items()))
        hint = ""
        if modalities is None and any("missing modality" in m for m in failures.values()):
            hint = ("\nto use cases that have only some sequences, name the ones to use, "
                    "e.g. --modalities t2,t1")
        raise PreprocessFailed(f"{len(failures)} of {len(cases)} cases failed (the other "
                               f"{len(ids)} are in {output}):\n{lines}{hint}")
    if kept:
        others = ", ".join(s for s in sources if s != source)
        print(f"{output} holds {len(listed)} cases: {len(kept)} from {others} and {len(ids)} "
              f"from {source}", file=sys.stderr)
    return listed


def _collect(results, done: set[str], failures: dict[str, str], bar: tqdm) -> None:
    for cid, err in results:
        if err is None:
            done.add(cid)
        else:
            failures[cid] = err
            tqdm.write(f"failed: {err}", file=sys.stderr)
        bar.update(1)

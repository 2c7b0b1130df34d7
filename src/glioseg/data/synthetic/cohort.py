"""Writing synthetic cohorts: each case in a published BraTS layout, resumable, in parallel.

Each case goes to a temporary folder renamed when complete, with a marker (``MARKER``)
recording the generator's parameters, the case's statistics and its drawn ``CaseParams``; a
complete case written with the same parameters is skipped (resume).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from glioseg.data import labels as L
from glioseg.data.layouts import LAYOUTS, case_file_name, case_id_for
from glioseg.data.nifti import save_volume
from glioseg.data.sites import get_site
from glioseg.data.synthetic.grid import SynthError
from glioseg.data.synthetic.render import generate_case
from glioseg.io_atomic import atomic_dir

GENERATOR_VERSION = "glioseg-synth/2"  # 2: the calibrated target site (target-severe is the old one)
MARKER = ".synthetic.json"
"""Hidden file in each written case folder: generator parameters and case statistics."""


def _marker_params(layout: str, site: str, seed: int, index: int, spacing: float) -> dict:
    return {"generator": GENERATOR_VERSION, "layout": layout, "site": site, "seed": int(seed),
            "index": int(index), "spacing": float(spacing)}


def _write_case(
    out_dir: str, layout: str, site: str, seed: int, index: int, spacing: float
) -> str:
    """Generate and write one case (tmp folder, then rename); skip a complete identical case."""
    prof = get_site(site)
    cid = case_id_for(layout, index, prof.tag)
    final = Path(out_dir) / cid
    params = _marker_params(layout, site, seed, index, spacing)
    if final.exists():
        _check_existing(final, params)
        return str(final)
    with atomic_dir(final) as tmp:
        case = generate_case(seed, index, prof, spacing)
        for ci, mod in enumerate(L.MODALITIES):
            save_volume(tmp / case_file_name(layout, cid, mod), case.image[ci], case.affine,
                        np.int16)
        seg = L.from_internal(case.labels, layout)
        save_volume(tmp / case_file_name(layout, cid, "seg"), seg, case.affine, np.uint8)
        assert case.params is not None
        (tmp / MARKER).write_text(json.dumps({**params, "case_id": cid, "stats": case.stats,
                                              "params": case.params.to_dict()}, indent=1))
    return str(final)


def _check_existing(folder: Path, params: dict) -> None:
    marker = folder / MARKER
    if not marker.is_file():
        raise SynthError(f"{folder}: exists and was not written by the generator; "
                         "choose another output folder")
    try:
        old = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SynthError(f"{marker}: unreadable generator marker ({exc})") from None
    diff = [k for k, v in params.items() if old.get(k) != v]
    if diff:
        raise SynthError(f"{folder}: exists with different generator parameters "
                         f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); "
                         "choose another output folder")


def write_cohort(
    out_dir: str | Path,
    n_cases: int = 10,
    layout: str = "brats2021",
    site: str = "source",
    seed: int = 0,
    spacing: float = 1.0,
    start: int = 0,
    workers: int = 1,
) -> list[Path]:
    """Write cases ``start .. start + n_cases - 1`` of a synthetic cohort in a BraTS layout.

    Each case goes to a temporary folder and is renamed when complete; an existing complete
    case written with the same parameters is skipped (resume), one with other parameters is
    an error. Same ``seed`` -> same bytes, whatever ``workers``.

    Returns:
        The case folders, in index order.
    """
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    get_site(site)
    if n_cases < 1:
        raise SynthError(f"--cases must be at least 1, got {n_cases}")
    if start < 0:
        raise SynthError(f"--start must be >= 0, got {start}")
    if layout == "brats2020" and start + n_cases > 1000:
        raise SynthError("brats2020 case ids have 3 digits: start + cases must be <= 1000")
    if not 0.5 <= spacing <= 8.0:
        raise SynthError(f"--spacing must be between 0.5 and 8 mm, got {spacing}")
    if workers < 1:
        raise SynthError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    indices = list(range(start, start + n_cases))
    args = [(str(out), layout, site, int(seed), i, float(spacing)) for i in indices]
    done: dict[int, str] = {}
    bar = tqdm(total=n_cases, desc=f"synth {site}", unit="case")
    try:
        if workers == 1 or n_cases == 1:
            for a in args:
                done[a[4]] = _write_case(*a)
                bar.update()
        else:
            with ProcessPoolExecutor(min(workers, n_cases), mp_context=get_context("spawn")) as ex:
                futs = {ex.submit(_write_case, *a): a[4] for a in args}
                for fut in as_completed(futs):
                    done[futs[fut]] = fut.result()
                    bar.update()
    finally:
        bar.close()
    return [Path(done[i]) for i in indices]


def describe_sites() -> str:
    """One line per site profile (for help texts)."""
    from glioseg.data.sites import SITES

    return "\n".join(f"{n}: {asdict(p)}" for n, p in SITES.items())


def cohort_digest(paths: list[Path]) -> str:
    """SHA-256 over the bytes of every NIfTI file of ``paths`` (sorted); for reproducibility checks."""
    h = hashlib.sha256()
    for folder in paths:
        for f in sorted(Path(folder).glob("*.nii.gz")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()

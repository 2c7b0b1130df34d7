"""``glioseg bench cache``: reading cases from the preprocessing cache vs from NIfTI files.

Figures (printed and returned):

- whole cases: cases/s and MB/s (of float32 voxels delivered) reading every voxel of every
  case from the memory-mapped cache, vs ``load_case`` of the NIfTI files each time;
- random patches of 128^3 and 64^3 copied out of the memory maps: patches/s and MB/s;
- bytes per case on disk: cache folder vs the case's NIfTI files.

The cache is read through the page cache: after the first pass the files are in memory, as
they are during training; a cold read is bounded by the disk instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from glioseg.bench import BenchError
from glioseg.data.cases import Case, discover, load_case
from glioseg.preprocess.cache import CachedCase, open_cache

MB = 1e6


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _case_files_bytes(case: Case) -> int:
    files = set(case.images.values()) | ({case.seg} if case.seg else set())
    return sum(p.stat().st_size for p in files)


def _read_cache_case(case: CachedCase) -> int:
    """Touch every voxel of a cached case; return the bytes read."""
    image = case.image
    total = float(np.sum(image, dtype=np.float64))  # reads every page
    labels = case.labels
    n = image.nbytes
    if labels is not None:
        total += float(np.sum(labels, dtype=np.int64))
        n += labels.nbytes
    if not np.isfinite(total):
        raise BenchError(f"{case.case_id}: non-finite voxels in the cache")
    return n


def _read_patches(case: CachedCase, size: int, count: int, rng: np.random.Generator) -> int:
    """Copy ``count`` random ``size``^3 patches (image and labels) out of a cached case."""
    image, labels = case.image, case.labels
    shape = np.array(image.shape[1:])
    n = 0
    for _ in range(count):
        lo = [int(rng.integers(0, max(1, s - size + 1))) for s in shape]
        sl = tuple(slice(a, a + size) for a in lo)
        patch = np.array(image[(slice(None), *sl)])
        n += patch.nbytes
        if labels is not None:
            n += np.array(labels[sl]).nbytes
    return n


def bench_cache(
    data_dir: str | Path, cache_dir: str | Path, repeats: int = 2, patches_per_case: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure and print cache vs NIfTI reading speed and size (see module docstring).

    Args:
        data_dir: the data folder the cache was built from.
        cache_dir: the cache folder (``glioseg preprocess``).
        repeats: passes over the cases for each measurement (the best pass is kept).
        patches_per_case: random patches per case and size.
        seed: seed of the patch positions.

    Returns:
        ``{"cases", "nifti_cases_per_s", "nifti_mb_per_s", "cache_cases_per_s",
        "cache_mb_per_s", "patch128_per_s", "patch128_mb_per_s", "patch64_per_s",
        "patch64_mb_per_s", "nifti_bytes_per_case", "cache_bytes_per_case", "speedup"}``.
    """
    cached = {c.case_id: c for c in open_cache(cache_dir)}
    cases = [c for c in discover(data_dir) if c.case_id in cached]
    if not cases:
        raise BenchError(f"{cache_dir}: no case in common with {data_dir}")
    ccases = [cached[c.case_id] for c in cases]
    rng = np.random.default_rng(seed)
    repeats = max(1, repeats)

    def timed(fn, items, desc: str) -> tuple[float, int]:
        best, nbytes = float("inf"), 0
        for r in range(repeats):
            t0 = time.perf_counter()
            n = sum(fn(x) for x in tqdm(items, desc=f"{desc} {r + 1}/{repeats}", leave=False))
            best = min(best, time.perf_counter() - t0)
            nbytes = n
        return best, nbytes

    def nifti(case: Case) -> int:
        data = load_case(case)
        return data.image.nbytes + (data.labels.nbytes if data.labels is not None else 0)

    t_nii, b_nii = timed(nifti, cases, "nifti")
    t_cache, b_cache = timed(_read_cache_case, ccases, "cache")
    out: dict[str, Any] = {
        "cases": len(cases),
        "nifti_cases_per_s": len(cases) / t_nii,
        "nifti_mb_per_s": b_nii / MB / t_nii,
        "cache_cases_per_s": len(cases) / t_cache,
        "cache_mb_per_s": b_cache / MB / t_cache,
    }
    for size in (128, 64):
        t, b = timed(lambda c, s=size: _read_patches(c, s, patches_per_case, rng), ccases,
                     f"patches {size}^3")
        out[f"patch{size}_per_s"] = len(ccases) * patches_per_case / t
        out[f"patch{size}_mb_per_s"] = b / MB / t
    out["nifti_bytes_per_case"] = float(np.mean([_case_files_bytes(c) for c in cases]))
    out["cache_bytes_per_case"] = float(np.mean([_folder_bytes(c.path) for c in ccases]))
    out["speedup"] = out["cache_cases_per_s"] / out["nifti_cases_per_s"]
    _print(out)
    return out


def _print(r: dict[str, Any]) -> None:
    print(f"cases: {r['cases']} (best of the passes; cache read through the page cache)")
    print(f"{'NIfTI load_case':<28}{r['nifti_cases_per_s']:10.2f} cases/s {r['nifti_mb_per_s']:10.1f} MB/s")
    print(f"{'cache, every voxel':<28}{r['cache_cases_per_s']:10.2f} cases/s {r['cache_mb_per_s']:10.1f} MB/s"
          f"   ({r['speedup']:.1f}x)")
    for s in (128, 64):
        print(f"{f'cache, random {s}^3 patches':<28}{r[f'patch{s}_per_s']:10.1f} patch/s "
              f"{r[f'patch{s}_mb_per_s']:10.1f} MB/s")
    print(f"bytes per case on disk: NIfTI {r['nifti_bytes_per_case'] / MB:.1f} MB, "
          f"cache {r['cache_bytes_per_case'] / MB:.1f} MB")

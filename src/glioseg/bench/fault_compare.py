"""A recovered stage's outputs against the uninterrupted run's, for ``glioseg bench faults``:
arrays and tensors bit for bit, JSON and CSV values equal (NaN equals NaN), the same set of
files; each function returns the differences as short lines (empty: identical)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.bench.fault_files import walk_outputs


def compare_arrays(ref: np.ndarray, got: np.ndarray, what: str) -> list[str]:
    """Bit-for-bit comparison of two arrays: dtype, shape and every byte."""
    if ref.dtype != got.dtype:
        return [f"{what}: dtype {got.dtype} != {ref.dtype}"]
    if ref.shape != got.shape:
        return [f"{what}: shape {got.shape} != {ref.shape}"]
    a, b = np.ascontiguousarray(ref), np.ascontiguousarray(got)
    if a.tobytes() == b.tobytes():
        return []
    bytes_a = np.frombuffer(a.tobytes(), np.uint8).reshape(a.size, -1)
    bytes_b = np.frombuffer(b.tobytes(), np.uint8).reshape(b.size, -1)
    n = int(np.count_nonzero((bytes_a != bytes_b).any(axis=1)))  # values with another bit
    msg = f"{what}: {n} of {a.size} values differ"
    if np.issubdtype(a.dtype, np.number) and a.size:
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        msg += f" (max abs diff {float(np.nanmax(diff)) if np.isfinite(diff).any() else 'nan'})"
    return [msg]


def values_equal(ref: Any, got: Any) -> bool:
    """Deep equality of JSON-like values; NaN equals NaN."""
    if isinstance(ref, float) and isinstance(got, float):
        return ref == got or (math.isnan(ref) and math.isnan(got))
    if isinstance(ref, Mapping) and isinstance(got, Mapping):
        return ref.keys() == got.keys() and all(values_equal(ref[k], got[k]) for k in ref)
    if isinstance(ref, list | tuple) and isinstance(got, list | tuple):
        return len(ref) == len(got) and all(values_equal(a, b) for a, b in zip(ref, got,
                                                                                strict=True))
    return type(ref) is type(got) and ref == got


def _json_differences(ref: Any, got: Any, where: str) -> list[str]:
    if isinstance(ref, Mapping) and isinstance(got, Mapping):
        if ref.keys() != got.keys():
            return [f"{where}: keys {sorted(set(ref) ^ set(got))} in one file only"]
        out: list[str] = []
        for k in ref:
            out += _json_differences(ref[k], got[k], f"{where}.{k}")
        return out
    return [] if values_equal(ref, got) else [f"{where}: {got!r} != {ref!r}"[:200]]


def compare_file(ref: Path, got: Path, rel: str) -> list[str]:
    """Compare one output file with the reference's by kind: arrays bit for bit, JSON values
    equal, anything else byte for byte."""
    name = ref.name
    if name.endswith(".npy"):
        return compare_arrays(np.load(ref), np.load(got), rel)
    if name.endswith(".npz"):
        with np.load(ref) as a, np.load(got) as b:
            if sorted(a.files) != sorted(b.files):
                return [f"{rel}: arrays {sorted(b.files)} != {sorted(a.files)}"]
            return [d for k in a.files for d in compare_arrays(a[k], b[k], f"{rel}[{k}]")]
    if name.endswith(".json"):
        return _json_differences(json.loads(ref.read_text()), json.loads(got.read_text()), rel)
    return [] if ref.read_bytes() == got.read_bytes() else [f"{rel}: bytes differ"]


def _same_file_set(ref: Path, got: Path, names: Callable[[Path], bool]) -> tuple[list[Path],
                                                                                 list[str]]:
    a = [p for p in walk_outputs(ref)[0] if names(p)]
    b = [p for p in walk_outputs(got)[0] if names(p)]
    diffs = [f"{p}: missing" for p in sorted(set(a) - set(b))]
    diffs += [f"{p}: not in the uninterrupted run's output" for p in sorted(set(b) - set(a))]
    return sorted(set(a) & set(b)), diffs


def compare_cache(ref: Path, got: Path) -> list[str]:
    """Every file of two preprocessing caches: arrays bit for bit, JSON values equal."""
    common, diffs = _same_file_set(ref, got, lambda p: True)
    for rel in common:
        diffs += compare_file(ref / rel, got / rel, str(rel))
    return diffs


def compare_predictions(ref: Path, got: Path) -> list[str]:
    """Every ``<case>.nii.gz`` label file: voxel arrays (as stored) bit for bit, same affine."""
    from glioseg.data.nifti import load_volume

    common, diffs = _same_file_set(ref, got, lambda p: p.name.endswith((".nii.gz", ".nii")))
    for rel in common:
        a, ha = load_volume(ref / rel, dtype=None)
        b, hb = load_volume(got / rel, dtype=None)
        diffs += compare_arrays(a, b, str(rel))
        if not np.array_equal(ha.affine, hb.affine):
            diffs.append(f"{rel}: affine differs")
    return diffs


def _read_table(path: Path) -> list[dict[str, Any]]:
    def value(s: str) -> Any:
        try:
            return float(s)
        except ValueError:
            return s

    with path.open(newline="") as fh:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def compare_evaluation(ref: Path, got: Path) -> list[str]:
    """``per_case.csv`` (every value of every row) and ``summary.json`` (every value)."""
    diffs: list[str] = []
    for name in ("per_case.csv", "summary.json"):
        if not (got / name).is_file():
            diffs.append(f"{name}: missing")
            continue
        if name.endswith(".json"):
            diffs += compare_file(ref / name, got / name, name)
            continue
        a, b = _read_table(ref / name), _read_table(got / name)
        if len(a) != len(b):
            diffs.append(f"{name}: {len(b)} rows != {len(a)}")
            continue
        for i, (ra, rb) in enumerate(zip(a, b, strict=True), 1):
            diffs += _json_differences(ra, rb, f"{name} row {i}")
    return diffs


def compare_state_dicts(ref: Mapping[str, Any], got: Mapping[str, Any],
                        what: str) -> tuple[float, list[str]]:
    """(largest absolute difference, differences) between two (nested) state dicts of
    tensors; equal means every tensor bit for bit."""
    import torch

    diffs: list[str] = []
    worst = 0.0
    if ref.keys() != got.keys():
        return math.inf, [f"{what}: keys {sorted(map(str, set(ref) ^ set(got)))[:5]} in one only"]
    for k, a in ref.items():
        b = got[k]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            w, d = compare_state_dicts(a, b, f"{what}.{k}")
            worst, diffs = max(worst, w), diffs + d
        elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype:
                worst = math.inf
                diffs.append(f"{what}.{k}: {tuple(b.shape)} {b.dtype} != {tuple(a.shape)} "
                             f"{a.dtype}")
            elif not torch.equal(a, b):
                d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                worst = max(worst, d)
                diffs.append(f"{what}.{k}: max abs diff {d:.3g}")
        elif not values_equal(a, b):
            diffs.append(f"{what}.{k}: {b!r} != {a!r}"[:200])
    return worst, diffs

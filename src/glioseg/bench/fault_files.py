"""What a killed stage left in its output folder: visible files and hidden temporaries
(``walk_outputs``), and whether each visible file reads whole as its kind (``check_loadable``,
``half_written``), for ``glioseg bench faults``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np


def is_hidden(rel: Path) -> bool:
    """True when a part of the relative path starts with a dot (temporaries, old folders)."""
    return any(part.startswith(".") for part in rel.parts)


def walk_outputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(visible files, hidden entries) under ``folder``, relative to it, sorted. Hidden
    folders are listed, not entered."""
    visible: list[Path] = []
    hidden: list[Path] = []
    if not folder.is_dir():
        return visible, hidden
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for d in sorted(dirs):
            if d.startswith("."):
                hidden.append((here / d).relative_to(folder))
                dirs.remove(d)
        for f in files:
            rel = (here / f).relative_to(folder)
            (hidden if f.startswith(".") else visible).append(rel)
    return sorted(visible), sorted(hidden)


def _check_jsonl(path: Path, allow_torn_tail: bool) -> str | None:
    lines = path.read_text(encoding="utf-8").split("\n")
    whole, tail = lines[:-1], lines[-1]
    for i, line in enumerate(whole, 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {i} is not JSON ({exc})"
    if tail and not allow_torn_tail:
        return "torn last line (no newline)"
    return None


def _check_csv(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        return "no newline at the end (truncated?)"
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return "empty table"
    bad = [i for i, r in enumerate(rows[1:], 2) if len(r) != len(rows[0])]
    return f"row {bad[0]} has another number of fields than the header" if bad else None


def check_loadable(path: Path, allow_torn_tail: bool = False) -> str | None:
    """None when the file reads whole as its kind, else what is wrong. ``allow_torn_tail``:
    a ``.jsonl`` log may end in a torn line (a kill mid-append; dropped on resume)."""
    name = path.name
    try:
        if path.stat().st_size == 0 and not name.endswith(".jsonl"):
            return "empty file"
        if name.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".jsonl"):
            return _check_jsonl(path, allow_torn_tail)
        elif name.endswith(".csv"):
            return _check_csv(path)
        elif name.endswith((".nii.gz", ".nii")):
            from glioseg.data.nifti import load_volume

            load_volume(path, dtype=None)
        elif name.endswith(".pt"):
            from glioseg.train.checkpoint import load_checkpoint

            load_checkpoint(path)
        elif name.endswith(".safetensors"):
            from glioseg.model.card import load_state_dict

            load_state_dict(path)
        elif name.endswith((".yaml", ".yml")):
            import yaml

            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif name.endswith((".md", ".txt", ".html")):
            path.read_text(encoding="utf-8")
        elif "tfevents" in name:  # appended by TensorBoard; its reader stops at a torn record
            return None
        else:
            path.read_bytes()
    except Exception as exc:  # whatever a reader raises on a half-written file
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return None


def half_written(folder: Path, allow_torn_tail: bool = False) -> list[str]:
    """Visible files under ``folder`` that do not load, as ``"rel: what is wrong"``."""
    visible, _ = walk_outputs(folder)
    out = []
    for rel in visible:
        problem = check_loadable(folder / rel, allow_torn_tail)
        if problem:
            out.append(f"{rel}: {problem}")
    return out

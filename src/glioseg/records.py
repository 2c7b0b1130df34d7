"""Plain-data helpers every layer may use: reading JSON-lines files and the JSON records a
stage leaves in its folder, flattening nested records.

``read_jsonl`` is the one parser of JSON-lines files, strict or lenient; ``read_json_object``
the lenient reader of one JSON object (``predict.json``, ``dataset.json``, ``timings.json``); ``metrics.jsonl``, the
log of a training run, is written and read through ``glioseg.metrics_log``, which parses it
here. Imports neither torch nor any pipeline module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glioseg.errors import GliosegError


class RecordsError(GliosegError, ValueError):
    """A JSON-lines file with a bad line before its last; the message names the file and line."""


def read_jsonl(path: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """The records (JSON objects, one a line) of a JSON-lines file; blank lines are skipped.

    ``strict=False`` (readers of files that may be mid-write: reports, plots): every line that
    is not a JSON object is skipped, and undecodable bytes are replaced. ``strict=True`` (the
    trainer resuming its own log): the file is appended line by line, so a run killed mid-write
    can leave its last line torn and that line is dropped; a bad line before the last raises
    ``RecordsError`` naming the file and line.
    """
    text = Path(path).read_text(errors="replace") if not strict else Path(path).read_text()
    lines = [x for x in text.splitlines() if x.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        elif strict and i == len(lines) - 1:
            break
        elif strict:
            raise RecordsError(f"{path}: line {i + 1} is not a JSON record")
    return records


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing or unreadable, is not JSON
    or holds another JSON value (a record a stage may not have written yet, or whole)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return doc if isinstance(doc, dict) else None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to ``{"a.b.c": value}``; lists stay values, an empty mapping vanishes;
    a value that is not a mapping is ``{prefix or "value": obj}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix or "value"] = obj
    return out

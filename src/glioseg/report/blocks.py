"""The content model of a report and the tables it is made of.

A report is a list of ``Section``s (one per folder, sub-folders as children), each a list of
``Block``s (text, verdict, list, code, Markdown, table, image) that ``report.html_page`` and
``report.markdown_page`` render. ``fmt``, ``kv_table`` and ``json_blocks`` turn JSON and CSV
values into table blocks; ``demote_headings`` pushes a folder's Markdown under its section.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from glioseg.records import flatten

MAX_ROWS = 60
"""Rows of a CSV file shown in a table."""


@dataclass
class Block:
    """One piece of a section.

    ``kind`` and ``data``: ``text`` str; ``verdict`` str; ``list`` list[str]; ``code`` str;
    ``markdown`` str; ``table`` dict(header, rows, note); ``image`` dict(png bytes, path
    relative to the report, caption).
    """

    kind: str
    data: Any
    title: str | None = None


@dataclass
class Section:
    """A titled group of blocks; ``children`` are sub-folder sections."""

    title: str
    anchor: str
    level: int
    blocks: list[Block] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)


# ---------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """Short text of a JSON/CSV value: 4 significant digits for floats, lists joined."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(fmt(v) for v in value) if len(value) <= 12 else f"[{len(value)} values]"
    if isinstance(value, dict | list):
        return json.dumps(value)[:200]
    text = str(value)
    try:
        return fmt(float(text)) if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", text) else text
    except ValueError:
        return text


def kv_table(items: dict[str, Any], note: str | None = None) -> Block:
    return Block("table", {"header": ["key", "value"],
                           "rows": [[k, fmt(v)] for k, v in items.items()], "note": note})


def _is_record_list(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(r, dict) for r in obj)


def json_blocks(obj: Any, title: str | None = None, depth: int = 0) -> list[Block]:
    """Tables for any JSON value.

    A list of records becomes one table; a dict whose values are all dicts (e.g. region ->
    metric -> value) becomes a matrix table (rows: keys, columns: flattened inner keys); other
    dicts give a key/value table of their scalars and recurse into the rest (3 levels).
    """
    if _is_record_list(obj):
        recs = [flatten(r) for r in obj]
        cols = list(dict.fromkeys(k for r in recs for k in r))
        rows = [[fmt(r.get(c, "")) for c in cols] for r in recs[:MAX_ROWS]]
        note = f"first {MAX_ROWS} of {len(recs)} rows" if len(recs) > MAX_ROWS else None
        return [Block("table", {"header": cols, "rows": rows, "note": note}, title)]
    if not isinstance(obj, dict):
        return [kv_table({"value": obj})]
    if len(obj) > 1 and all(isinstance(v, dict) and v for v in obj.values()):
        inner = {k: flatten(v) for k, v in obj.items()}
        cols = list(dict.fromkeys(c for f in inner.values() for c in f))
        if len(cols) <= 16 and not any(_is_record_list(x) for f in inner.values()
                                       for x in f.values()):
            rows = [[k] + [fmt(f.get(c, "")) for c in cols] for k, f in inner.items()]
            return [Block("table", {"header": [""] + cols, "rows": rows, "note": None}, title)]
    scalars = {k: v for k, v in obj.items()
               if not isinstance(v, dict) and not _is_record_list(v)}
    blocks = [Block("table", kv_table(scalars).data, title)] if scalars else []
    for k, v in obj.items():
        if k in scalars:
            continue
        sub = f"{title} / {k}" if title else str(k)
        if depth >= 2:
            blocks.append(Block("table", kv_table(flatten(v) if isinstance(v, dict)
                                                  else {k: v}).data, sub))
        else:
            blocks.extend(json_blocks(v, sub, depth + 1))
    return blocks


def demote_headings(text: str, by: int) -> str:
    """Push Markdown ATX headings (``#``) down ``by`` levels, outside fenced code; 6 at most."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6})(\s)", line)
        if m:
            line = "#" * min(6, len(m.group(1)) + by) + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out)


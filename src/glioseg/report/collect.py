"""What a run folder holds, as report sections: ``build_report(run_dir)``.

The report discovers what the folder holds and makes a section for each kind of content:

=========================  ===========================================================
file                       rendered as
=========================  ===========================================================
``card.json``              model card (key/value table)
``config.yaml`` (any yaml) resolved configuration (verbatim)
``metrics.jsonl``          training curves (``curves.png`` beside it, else drawn) + latest
                           value of every key
``summary.json``           metric tables (nested dicts become a region x metric table)
``*.csv``                  tables (first ``MAX_ROWS`` rows)
``*.md``                   Markdown (tables rendered; raw HTML shown as text: ``report.sanitise``)
``shift.json``             verdict, advice, test table, largest feature shifts, its PNGs
other ``*.json``           tables (study results, ...)
``*.png``                  figures (overlays, curves, plots)
``timings.json``,          timings and hardware tables (``glioseg.runinfo``: written by
``hardware.json``          train/finetune/pretrain, predict, evaluate and the demo; a
                           sub-folder's ``hardware.json`` equal to the root's is one line),
                           plus the platform of the machine rendering the report
=========================  ===========================================================

Sub-folders (e.g. a demo folder holding several runs) become sub-sections. Missing parts are
simply absent. An optional ``.report.json`` at the root leaves paths out, orders sub-sections
and titles them (``SPEC_FILE``; ``glioseg demo`` writes one). Figures drawn for the report go
to ``report_figures/`` when it is written (``build_report`` returns them beside the sections).

``report.html_page`` and ``report.markdown_page`` render the sections, ``report.html``
(``write_report``) writes both files.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

from glioseg.errors import GliosegError
from glioseg.records import flatten, read_jsonl
from glioseg.report.blocks import (
    MAX_ROWS,
    Block,
    Section,
    demote_headings,
    fmt,
    json_blocks,
    kv_table,
)
from glioseg.report.environment import environment_blocks
from glioseg.report.section_curves import curves_png

MAX_DEPTH = 4
"""Deepest sub-folder rendered as a section."""

MAX_SUBFOLDERS = 30
"""A folder with more sub-folders than this (e.g. a folder of cases) is summarised, not walked."""

OUTPUTS = ("report.html", "report.md")
FIG_DIR = "report_figures"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(GliosegError, ValueError):
    """A run folder that cannot be reported (missing, not a folder)."""



# ---------------------------------------------------------------------------- discovery


class _Builder:
    """Walks a run folder and turns what it finds into sections."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generated: dict[str, bytes] = {}  # report_figures/<name> -> PNG
        self.spec = read_spec(root)
        self.root_hardware = _read_json(root / "hardware.json")

    def skipped(self, path: Path) -> bool:
        """Whether ``.report.json``'s ``skip`` globs match ``path`` (relative to the root)."""
        rel = self.rel(path)
        return any(fnmatch.fnmatchcase(rel, pat) for pat in self.spec["skip"])

    def ordered(self, subdirs: list[Path]) -> list[Path]:
        """Sub-folders named in ``.report.json``'s ``order`` first, in that order."""
        order = {name: i for i, name in enumerate(self.spec["order"])}
        return sorted(subdirs, key=lambda p: (order.get(self.rel(p), len(order)), p.name))

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def image(self, path: Path, caption: str | None = None) -> Block:
        data = path.read_bytes()
        if not data.startswith(PNG_MAGIC):
            return Block("text", f"{self.rel(path)}: not a PNG file, skipped")
        return Block("image", {"png": data, "path": self.rel(path),
                               "caption": caption or self.rel(path)})

    def generated_image(self, folder: Path, name: str, png: bytes, caption: str) -> Block:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.rel(folder)).strip("_") or "root"
        path = f"{FIG_DIR}/{slug}_{name}"
        self.generated[path] = png
        return Block("image", {"png": png, "path": path, "caption": caption})

    # -- one handler per kind of content; each takes the files it uses out of ``files``.

    def card(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        path = files.pop("card.json", None)
        if path is None:
            return []
        card, unreadable = _load_json(path, "Model card")
        if unreadable:
            return unreadable
        if not isinstance(card, dict):
            return [Block("text", "card.json: not a JSON object", "Model card")]
        return [Block("table", kv_table(flatten(card)).data, "Model card")]

    def config(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        for name in sorted(n for n in files if n.endswith((".yaml", ".yml"))):
            text = files.pop(name).read_text(errors="replace")
            title = "Configuration" if name.startswith("config") else name
            blocks.append(Block("code", text, f"{title} ({name})"))
        return blocks

    def curves(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        for name in sorted(n for n in files if n.endswith(".jsonl")):
            recs = read_jsonl(files.pop(name))
            if not recs:
                blocks.append(Block("text", f"{name}: no records", "Training curves"))
                continue
            title = "Training curves" if name == "metrics.jsonl" else name
            if name == "metrics.jsonl" and "curves.png" in files:  # drawn by `glioseg plot`
                blocks.append(Block("text", f"{len(recs)} records in {name}.", title))
                img = self.image(files.pop("curves.png"))
                blocks.append(img)
                png = None
            else:
                png = curves_png(recs, f"{self.rel(folder / name)} ({len(recs)} records)")
            if png is not None:
                blocks.append(Block("text", f"{len(recs)} records in {name}.", title))
                blocks.append(self.generated_image(folder, Path(name).stem + ".png", png,
                                                   f"curves drawn from {self.rel(folder / name)}"))
            latest: dict[str, Any] = {}
            for rec in recs:  # train and validation records may alternate
                latest.update(flatten(rec))
            blocks.append(Block("table", kv_table(latest).data, f"Latest values in {name}"))
        return blocks

    def shift(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        path = files.pop("shift.json", None)
        if path is None:
            return []
        doc, unreadable = _load_json(path, "Domain shift")
        if unreadable:
            return unreadable
        blocks = [Block("verdict", str(doc.get("verdict", "(no verdict)")), "Domain shift")]
        if doc.get("advice"):
            blocks.append(Block("list", [str(a) for a in doc["advice"]]))
        src, tgt = doc.get("source", {}), doc.get("target", {})
        blocks.append(Block("text", f"source: {src.get('dir')} ({src.get('n_cases')} cases); "
                                    f"target: {tgt.get('dir')} ({tgt.get('n_cases')} cases)"))
        rows = []
        for view, tests in (doc.get("tests") or {}).items():
            for name, r in tests.items():
                rows.append([view, name, fmt(r.get("mmd2")), fmt(r.get("p_value")),
                             fmt(r.get("null_q95")), fmt(r.get("bandwidth")),
                             f"{r.get('n_source')} / {r.get('n_target')}"])
        if rows:
            blocks.append(Block("table", {"header": ["features", "test", "MMD^2_u", "p",
                                                     "null 95%", "bandwidth", "cases"],
                                          "rows": rows, "note": None}, "MMD permutation tests"))
        if doc.get("feature_shifts"):
            blocks.extend(json_blocks(doc["feature_shifts"][:8],
                                      "Largest feature shifts (pooled SD)"))
        for fig in doc.get("figures", []):
            if fig in files:
                blocks.append(self.image(files.pop(fig)))
        return blocks

    def tables(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        for name in sorted(n for n in files if n.endswith(".csv")):
            blocks.append(self.csv_table(files.pop(name)))
        for name in sorted(n for n in files if n.endswith(".md")):
            text = files.pop(name).read_text(errors="replace")
            blocks.append(Block("markdown", demote_headings(text, 3), name))
        return blocks

    def csv_table(self, path: Path) -> Block:
        with path.open(newline="", errors="replace") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return Block("text", f"{path.name}: empty", path.name)
        body = rows[1:]
        note = f"first {MAX_ROWS} of {len(body)} rows" if len(body) > MAX_ROWS else None
        title = "Per-case metrics" if path.name == "per_case.csv" else path.name
        return Block("table", {"header": rows[0], "rows": [[fmt(c) for c in r]
                                                          for r in body[:MAX_ROWS]],
                               "note": note}, f"{title} ({path.name})")

    def jsons(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        order = ["summary.json"] + sorted(n for n in files if n.endswith(".json")
                                          and n not in ("summary.json", "shift.json",
                                                        "timings.json", "hardware.json"))
        for name in order:
            if name not in files:
                continue
            obj, unreadable = _load_json(files.pop(name), name)
            if unreadable:
                blocks.extend(unreadable)
                continue
            title = "Evaluation summary" if name == "summary.json" else name
            sub = json_blocks(obj)
            if sub:
                sub[0].title = f"{title} ({name})" if sub[0].title is None else \
                    f"{title} ({name}): {sub[0].title}"
            blocks.extend(sub)
        return blocks

    def figures(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        for name in sorted(n for n in files if n.lower().endswith(".png")):
            blocks.append(self.image(files.pop(name)))
        if blocks:
            blocks[0].title = "Figures"
        return blocks

    def timings(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        blocks = []
        for name, title in (("timings.json", "Timings"), ("hardware.json", "Hardware")):
            path = files.pop(name, None)
            if path is None:
                continue
            obj, unreadable = _load_json(path, title)
            if unreadable:
                blocks.extend(unreadable)
                continue
            if (name == "hardware.json" and folder != self.root and obj is not None
                    and obj == self.root_hardware and not self.skipped(self.root / name)):
                blocks.append(Block("text", "The same machine as the overview's hardware.json.",
                                    f"{title} ({name})"))
                continue
            sub = json_blocks(obj)
            if sub:  # e.g. timings.json {command: figures}: keep the command in the title
                sub[0].title = f"{title} ({name})" + (f": {sub[0].title}" if sub[0].title
                                                      else "")
            blocks.extend(sub)
        return blocks

    def others(self, folder: Path, files: dict[str, Path]) -> list[Block]:
        if not files:
            return []
        counts: dict[str, int] = {}
        for name in files:
            ext = "".join(Path(name).suffixes[-2:]) if name.endswith(".gz") else \
                Path(name).suffix
            counts[ext or "(no extension)"] = counts.get(ext or "(no extension)", 0) + 1
        text = "; ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))
        return [Block("text", f"Other files not rendered: {text}.")]

    HANDLERS = ("card", "config", "curves", "jsons", "tables", "shift", "figures", "timings",
                "others")
    """Order of the kinds of content within a section."""

    def section(self, folder: Path, level: int) -> Section | None:
        """Section of ``folder`` and its sub-folders; None when nothing in it is renderable."""
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
        files = {p.name: p for p in entries if p.is_file() and not p.name.startswith(".")
                 and not (folder == self.root and p.name in OUTPUTS) and not self.skipped(p)}
        subdirs = self.ordered([p for p in entries if p.is_dir() and not p.name.startswith(".")
                                and p.name not in (FIG_DIR, "__pycache__")
                                and not self.skipped(p)])
        title = "Overview" if folder == self.root else self.rel(folder)
        title = self.spec["titles"].get(self.rel(folder), title)
        anchor = "s-" + (re.sub(r"[^A-Za-z0-9]+", "-", self.rel(folder)).strip("-") or "root")
        sec = Section(title, anchor, level)
        for handler in self.HANDLERS:
            sec.blocks.extend(getattr(self, handler)(folder, files))
        if len(subdirs) > MAX_SUBFOLDERS or level > MAX_DEPTH:
            sec.blocks.append(Block("text", f"{len(subdirs)} sub-folders not rendered "
                                            "(too many or too deep; e.g. a folder of cases)."))
        else:
            for sub in subdirs:
                child = self.section(sub, level + 1)
                if child is not None:
                    sec.children.append(child)
        renderable = [b for b in sec.blocks if not (b.kind == "text"
                                                    and b.data.startswith("Other files"))]
        if not renderable and not sec.children and folder != self.root:
            return None
        return sec


def _load_json(path: Path, title: str) -> tuple[Any, list[Block]]:
    """``(JSON value of path, [])``, or ``(None, [a text block saying why it is unreadable])``
    for a file that is not JSON."""
    try:
        return json.loads(path.read_text()), []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [Block("text", f"{path.name}: unreadable ({exc})", title)]


def _read_json(path: Path) -> Any:
    """The JSON value of ``path``; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


SPEC_FILE = ".report.json"
"""Optional file at the root of a run folder shaping its report: ``{"skip": [globs of paths
relative to the root, files or folders left out], "order": [sub-folder paths rendered first,
in this order], "titles": {sub-folder path: section title}}`` (``glioseg demo`` writes one)."""


def read_spec(root: Path) -> dict[str, Any]:
    """``root/.report.json`` with defaults for missing keys; an unreadable file is ignored."""
    spec: dict[str, Any] = {"skip": [], "order": [], "titles": {}}
    loaded = _read_json(root / SPEC_FILE)
    if isinstance(loaded, dict):
        for key, kind in (("skip", list), ("order", list), ("titles", dict)):
            if isinstance(loaded.get(key), kind):
                spec[key] = loaded[key]
    return spec


def build_report(run_dir: str | Path, title: str | None = None) -> tuple[str, list[Section],
                                                                           dict[str, bytes]]:
    """Sections of ``run_dir``: ``(title, sections, generated figures path -> PNG)``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    b = _Builder(root.resolve())
    top = b.section(root.resolve(), 1)
    assert top is not None
    children, top.children = top.children, []
    for s in children:
        _relevel(s, 1)
    env = Section("Environment", "s-environment", 1, environment_blocks())
    sections = ([top] if top.blocks else []) + children + [env]
    return title or root.resolve().name, sections, b.generated


def _relevel(sec: Section, level: int) -> None:
    sec.level = level
    for c in sec.children:
        _relevel(c, level + 1)


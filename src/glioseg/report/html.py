"""``glioseg report RUN_DIR``: one self-contained ``report.html`` (+ ``report.md``) of a run folder.

The report discovers what the folder holds and renders a section for each kind of content:

=========================  ===========================================================
file                       rendered as
=========================  ===========================================================
``card.json``              model card (key/value table)
``config.yaml`` (any yaml) resolved configuration (verbatim)
``metrics.jsonl``          training curves (``curves.png`` beside it, else drawn) + latest
                           value of every key
``summary.json``           metric tables (nested dicts become a region x metric table)
``*.csv``                  tables (first ``MAX_ROWS`` rows)
``*.md``                   Markdown (tables rendered; raw HTML shown as text, see below)
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
and titles them (``SPEC_FILE``; ``glioseg demo`` writes one). The HTML embeds every figure as a base64 PNG and needs no network; the Markdown
links figures by relative path (figures drawn for the report go to ``report_figures/``).

A folder's ``.md`` files are content, not markup the report trusts: their raw HTML is shown as
text (python-markdown's raw-HTML handling is switched off), and what Markdown itself produces
passes an allow-list (``sanitise_html``: known tags and attributes, ``href``/``src`` only
relative or ``http(s)``/``mailto`` (``data:image/`` for images)), so no script, event handler
or ``javascript:`` link from a run folder reaches ``report.html``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import fnmatch
import html
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glioseg import io_atomic
from glioseg.errors import GliosegError
from glioseg.records import flatten, read_jsonl

MAX_ROWS = 60
"""Rows of a CSV file shown in a table."""

MAX_DEPTH = 4
"""Deepest sub-folder rendered as a section."""

MAX_SUBFOLDERS = 30
"""A folder with more sub-folders than this (e.g. a folder of cases) is summarised, not walked."""

OUTPUTS = ("report.html", "report.md")
FIG_DIR = "report_figures"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(GliosegError, ValueError):
    """A run folder that cannot be reported (missing, not a folder)."""


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


# ---------------------------------------------------------------------------- figures


def _png_bytes(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _curve_group(key: str) -> str:
    low = key.lower()
    if "loss" in low:
        return "loss"
    if low in ("lr", "learning_rate") or low.endswith("/lr") or low.endswith("_lr"):
        return "learning rate"
    parts = re.split(r"[/_.]", key)
    return "_".join(parts[:-1]) if len(parts) > 1 else key


X_KEYS = ("step", "global_step", "iteration", "epoch")
SKIP_KEYS = ("time", "wall_time", "elapsed", "rank", "world_size", "seed")
"""Prefixes of ``metrics.jsonl`` keys that are bookkeeping, not curves."""


def curves_png(records: list[dict[str, Any]], title: str = "training curves") -> bytes | None:
    """Training curves of ``metrics.jsonl`` records: one panel per group of keys, at most 6.

    The x axis is the first of ``step``/``global_step``/``iteration``/``epoch`` present, else
    the record index. Returns None when no key has two numeric values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = next((k for k in X_KEYS if any(k in r for r in records)), None)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(records):
        x = rec.get(xkey, i) if xkey else i
        for k, v in flatten(rec).items():
            if k == xkey or k.lower().startswith(SKIP_KEYS) or isinstance(v, bool):
                continue
            if isinstance(v, int | float) and isinstance(x, int | float):
                series.setdefault(k, ([], []))
                series[k][0].append(float(x))
                series[k][1].append(float(v))
    series = {k: s for k, s in series.items() if len(s[0]) >= 2}
    if not series:
        return None
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(_curve_group(k), []).append(k)
    names = list(groups)[:6]
    ncol = min(3, len(names))
    nrow = (len(names) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for k in groups[name]:
            xs, ys = series[k]
            ax.plot(xs, ys, lw=1.4, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        if name == "learning rate" and all(v > 0 for k in groups[name] for v in series[k][1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xkey or "record")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png_bytes(fig)


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
        try:
            card = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return [Block("text", f"card.json: unreadable ({exc})", "Model card")]
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
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return [Block("text", f"shift.json: unreadable ({exc})", "Domain shift")]
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
            path = files.pop(name)
            try:
                obj = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                blocks.append(Block("text", f"{name}: unreadable ({exc})", name))
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
            try:
                obj = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                blocks.append(Block("text", f"{name}: unreadable ({exc})", title))
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
    try:
        loaded = json.loads((root / SPEC_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return spec
    if isinstance(loaded, dict):
        for key, kind in (("skip", list), ("order", list), ("titles", dict)):
            if isinstance(loaded.get(key), kind):
                spec[key] = loaded[key]
    return spec


def environment_blocks() -> list[Block]:
    """Platform of the machine rendering the report (the run's own is ``hardware.json``)."""
    from importlib import metadata

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["memory (GiB)"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        info["cpu"] = platform.processor() or "unknown"
    for pkg in ("glioseg", "torch", "numpy", "monai"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return [Block("table", kv_table(info).data,
                  "Machine that rendered this report")]


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


# ---------------------------------------------------------------------------- rendering

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
color:#1d2330;background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;
box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.8em;margin:.2em 0 .1em}h2{border-bottom:2px solid #e3e6eb;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.5em;color:#2b3a55}h4,h5{margin:1.2em 0 .4em;color:#2b3a55}
.meta{color:#667085;font-size:.9em}
nav{background:#f1f4f8;border-radius:6px;padding:8px 16px;font-size:.92em}
nav ul{margin:.2em 0;padding-left:1.2em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.86em;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;white-space:nowrap}
th{background:#eef1f5}tr:nth-child(even) td{background:#fafbfc}
pre{background:#f4f5f7;border:1px solid #e3e6eb;border-radius:4px;padding:10px;overflow-x:auto;
font-size:.85em;max-height:420px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e6eb;border-radius:4px}
figcaption{color:#667085;font-size:.85em}
.verdict{background:#fff7e6;border-left:5px solid #f0a020;padding:10px 14px;font-weight:600}
.note{color:#667085;font-size:.85em}
"""


def _html_table(data: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in data["header"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in data["rows"])
    note = f'<p class="note">{html.escape(data["note"])}</p>' if data.get("note") else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _html_block(block: Block, level: int) -> str:
    parts = []
    if block.title:
        h = min(level + 1, 5)
        parts.append(f"<h{h}>{html.escape(block.title)}</h{h}>")
    d = block.data
    if block.kind == "text":
        parts.append(f"<p>{html.escape(d)}</p>")
    elif block.kind == "verdict":
        parts.append(f'<p class="verdict">{html.escape(d)}</p>')
    elif block.kind == "list":
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in d) + "</ul>")
    elif block.kind == "code":
        parts.append(f"<pre>{html.escape(d)}</pre>")
    elif block.kind == "markdown":
        parts.append(markdown_to_html(d))
    elif block.kind == "table":
        parts.append(_html_table(d))
    elif block.kind == "image":
        b64 = base64.b64encode(d["png"]).decode("ascii")
        cap = html.escape(d["caption"])
        parts.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{cap}">'
                     f"<figcaption>{cap}</figcaption></figure>")
    return "\n".join(parts)


_ALLOWED_TAGS = frozenset(
    "a abbr b blockquote br code del dd div dl dt em h1 h2 h3 h4 h5 h6 hr i img li ol p pre "
    "span strong sub sup table tbody td tfoot th thead tr ul".split())
_ALLOWED_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "title"},
                  "th": {"style", "align"}, "td": {"style", "align"}, "code": {"class"},
                  "ol": {"start"}, "abbr": {"title"}}
_SAFE_STYLE = re.compile(r"\s*text-align:\s*(left|right|center)\s*;?\s*")
_SAFE_CLASS = re.compile(r"[\w -]*")
_DROP_CONTENT = frozenset({"script", "style"})


def _safe_url(value: str, tag: str) -> bool:
    """A link or image address that runs nothing: relative, ``#anchor``, http(s), mailto
    (and ``data:image/`` for an image). Browsers ignore control characters and spaces
    inside a scheme (``java\tscript:``), so they are removed before the scheme is read."""
    cleaned = re.sub(r"[\x00-\x20\x7f]+", "", value).lower()
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", cleaned)
    if scheme is None:
        return True
    if scheme.group(1) in ("http", "https", "mailto"):
        return True
    return tag == "img" and cleaned.startswith("data:image/")


def sanitise_html(fragment: str) -> str:
    """``fragment`` with only allow-listed tags and attributes (``_ALLOWED_TAGS``, safe URLs
    and alignment styles); any other tag is shown as escaped text, comments and processing
    instructions likewise, and the content of ``script``/``style`` is dropped."""
    from html.parser import HTMLParser

    out: list[str] = []
    dropping: list[str] = []

    def start(tag: str, attrs: list[tuple[str, str | None]], raw: str, close: bool) -> None:
        if dropping:
            return
        if tag in _DROP_CONTENT:
            dropping.append(tag)
            return
        if tag not in _ALLOWED_TAGS:
            out.append(html.escape(raw))
            return
        kept = []
        for name, value in attrs:
            value = value or ""
            if name not in _ALLOWED_ATTRS.get(tag, ()):
                continue
            if name in ("href", "src") and not _safe_url(value, tag):
                continue
            if name == "style" and not _SAFE_STYLE.fullmatch(value):
                continue
            if name == "class" and not _SAFE_CLASS.fullmatch(value):
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        out.append(f"<{tag}{''.join(kept)}{' /' if close else ''}>")

    class _Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            start(tag, attrs, self.get_starttag_text() or f"<{tag}>", False)

        def handle_startendtag(self, tag, attrs):
            start(tag, attrs, self.get_starttag_text() or f"<{tag}/>", True)

        def handle_endtag(self, tag):
            if dropping:
                if tag == dropping[-1]:
                    dropping.pop()
                return
            if tag in _ALLOWED_TAGS:
                out.append(f"</{tag}>")
            else:
                out.append(html.escape(f"</{tag}>"))

        def handle_data(self, data):
            if not dropping:
                out.append(html.escape(data, quote=False))

        def handle_comment(self, data):
            if not dropping:
                out.append(html.escape(f"<!--{data}-->"))

        def handle_decl(self, decl):
            out.append(html.escape(f"<!{decl}>"))

        def handle_pi(self, data):
            out.append(html.escape(f"<?{data}>"))

        def unknown_decl(self, data):
            out.append(html.escape(f"<![{data}]>"))

    parser = _Parser(convert_charrefs=True)
    parser.feed(fragment)
    parser.close()
    return "".join(out)


def markdown_to_html(text: str) -> str:
    """Markdown from a run folder -> safe HTML: raw HTML in ``text`` is shown as text, and
    the result passes ``sanitise_html`` (links that would run code are dropped)."""
    import markdown
    from markdown.extensions import Extension

    class _NoRawHtml(Extension):
        def extendMarkdown(self, md):
            md.preprocessors.deregister("html_block")
            md.inlinePatterns.deregister("html")

    return sanitise_html(markdown.markdown(text, extensions=["tables", "fenced_code",
                                                             _NoRawHtml()]))


def _toc(sections: list[Section]) -> str:
    items = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a>'
                    f"{_toc(s.children) if s.children else ''}</li>" for s in sections)
    return f"<ul>{items}</ul>"


def _html_section(sec: Section) -> str:
    h = min(sec.level + 1, 4)
    out = [f'<section id="{sec.anchor}"><h{h}>{html.escape(sec.title)}</h{h}>']
    out += [_html_block(b, h) for b in sec.blocks]
    out += [_html_section(c) for c in sec.children]
    out.append("</section>")
    return "\n".join(out)


def render_html(title: str, sections: list[Section], generated_at: str) -> str:
    """The self-contained HTML page (inline CSS, base64 figures, no scripts, no links out)."""
    body = "\n".join(_html_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1><p class=\"meta\">glioseg report, generated "
            f"{html.escape(generated_at)}</p><nav><strong>Contents</strong>{_toc(sections)}</nav>"
            f"{body}</main></body></html>\n")


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block, level: int) -> str:
    parts = []
    if block.title:
        parts.append(f"{'#' * min(level + 1, 6)} {block.title}\n")
    d = block.data
    if block.kind == "text":
        parts.append(f"{d}\n")
    elif block.kind == "verdict":
        parts.append(f"> **{d}**\n")
    elif block.kind == "list":
        parts.append("\n".join(f"- {x}" for x in d) + "\n")
    elif block.kind == "code":
        parts.append(f"```yaml\n{d.rstrip()}\n```\n")
    elif block.kind == "markdown":
        parts.append(d.rstrip() + "\n")
    elif block.kind == "table":
        head = "| " + " | ".join(_md_cell(h) for h in d["header"]) + " |"
        sep = "|" + "---|" * len(d["header"])
        rows = ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in d["rows"]]
        parts.append("\n".join([head, sep, *rows]) + "\n")
        if d.get("note"):
            parts.append(f"*{d['note']}*\n")
    elif block.kind == "image":
        parts.append(f"![{d['caption']}]({d['path']})\n")
    return "\n".join(parts)


def _md_section(sec: Section) -> str:
    h = min(sec.level + 1, 6)
    out = [f"{'#' * h} {sec.title}\n"]
    out += [_md_block(b, h) for b in sec.blocks]
    out += [_md_section(c) for c in sec.children]
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section], generated_at: str) -> str:
    """``report.md``: the same content; figures linked by path relative to the run folder."""
    return f"# {title}\n\nglioseg report, generated {generated_at}\n\n" + \
        "\n".join(_md_section(s) for s in sections)


def _write_atomic(path: Path, data: bytes) -> None:
    io_atomic.write_bytes(path, data)


def write_report(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``run_dir/report.html`` (self-contained) and ``run_dir/report.md``.

    Returns:
        ``(html_path, md_path)``.

    Raises:
        ReportError: if ``run_dir`` is not a folder.
    """
    root = Path(run_dir)
    name, sections, generated = build_report(root, title)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for rel, png in generated.items():
        _write_atomic(root / rel, png)
    html_path, md_path = root / "report.html", root / "report.md"
    _write_atomic(html_path, render_html(name, sections, stamp).encode("utf-8"))
    _write_atomic(md_path, render_markdown(name, sections, stamp).encode("utf-8"))
    return html_path, md_path

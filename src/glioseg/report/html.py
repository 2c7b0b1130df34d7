"""``glioseg report RUN_DIR``: one self-contained ``report.html`` (+ ``report.md``) of a run folder.

``write_report`` is the command's work, in three steps, each in its own module:

- ``report.collect.build_report``: what the folder holds, as sections of blocks (the table of
  which file is rendered as what is in that module's docstring; ``.report.json`` shapes it),
  with the training curves it draws (``report.section_curves``) and the Environment section
  of the machine rendering it (``report.environment``);
- ``report.html_page.render_html``: the HTML page, every figure embedded as a base64 PNG, no
  network; a folder's Markdown passes ``report.sanitise`` first;
- ``report.markdown_page.render_markdown``: the Markdown, figures linked by relative path
  (figures drawn for the report go to ``report_figures/``).

The names other modules and tests import from here (``build_report``, ``sanitise_html``, ...)
stay importable from here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from glioseg import io_atomic
from glioseg.report.blocks import MAX_ROWS, Block, Section, fmt, json_blocks, kv_table
from glioseg.report.collect import (
    FIG_DIR,
    OUTPUTS,
    SPEC_FILE,
    ReportError,
    build_report,
    read_spec,
)
from glioseg.report.environment import environment_blocks
from glioseg.report.html_page import render_html
from glioseg.report.markdown_page import render_markdown
from glioseg.report.sanitise import markdown_to_html, sanitise_html
from glioseg.report.section_curves import curves_png

__all__ = ["FIG_DIR", "MAX_ROWS", "OUTPUTS", "SPEC_FILE", "Block", "ReportError", "Section",
           "build_report", "curves_png", "environment_blocks", "fmt", "json_blocks", "kv_table",
           "markdown_to_html", "read_spec", "render_html", "render_markdown", "sanitise_html",
           "write_report"]


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
        io_atomic.write_bytes(root / rel, png)
    html_path, md_path = root / "report.html", root / "report.md"
    io_atomic.write_bytes(html_path, render_html(name, sections, stamp).encode("utf-8"))
    io_atomic.write_bytes(md_path, render_markdown(name, sections, stamp).encode("utf-8"))
    return html_path, md_path

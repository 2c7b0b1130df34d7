"""``report.md``: the report's sections as Markdown; figures linked by path relative to the
run folder (those drawn for the report lie in ``report_figures/``)."""

from __future__ import annotations

from typing import Any

from glioseg.report.blocks import Block, Section


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


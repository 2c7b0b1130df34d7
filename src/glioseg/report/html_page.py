"""``report.html``: one self-contained page of a report's sections (inline CSS, every figure
embedded as a base64 PNG, a table of contents; no scripts, no network)."""

from __future__ import annotations

import base64
import html
from typing import Any

from glioseg.report.blocks import Block, Section
from glioseg.report.sanitise import markdown_to_html

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


"""report/sanitise.py: Markdown files of a run folder cannot inject markup into report.html."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from glioseg.report.html import write_report

HOSTILE_MD = """# Notes

<script>alert("from the folder")</script>

<div onclick="steal()">click</div> <img src=x onerror=alert(2)> <iframe src="https://x"></iframe>

[a link](javascript:alert(3)) [tabbed](java&#x09;script:alert(4)) ![pic](data:text/html,x)
<a href="javascript:alert(5)">raw link</a>

| case | Dice |
|:-----|-----:|
| c1   | 0.91 |

```
if a < b: print("<b>")
```

[relative](other.md) and <https://example.org>
"""


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


def _assert_inert(page: str) -> _Tags:
    parsed = _parse(page)
    names = [t for t, _ in parsed.tags]
    assert "script" not in names and "iframe" not in names
    for tag, attrs in parsed.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("href", "src"):
                v = "".join((value or "").split()).lower()
                assert not v.startswith(("javascript:", "data:text")), (tag, name, value)
    return parsed


def test_markdown_from_a_run_folder_cannot_inject_html(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.md").write_text(HOSTILE_MD)
    html_path, _ = write_report(run)
    page = html_path.read_text()
    parsed = _assert_inert(page)
    text = "".join(parsed.text)
    # the raw HTML is shown as text, not dropped silently
    assert '<script>alert("from the folder")</script>' in text
    assert '<div onclick="steal()">click</div>' in text
    # ordinary Markdown still renders: table, code block (with its '<'), safe links
    names = [t for t, _ in parsed.tags]
    assert "table" in names and "pre" in names
    assert 'if a < b: print("<b>")' in text
    hrefs = [a.get("href") for t, a in parsed.tags if t == "a"]
    assert "other.md" in hrefs and "https://example.org" in hrefs


def test_sanitise_html_allow_list() -> None:
    from glioseg.report.sanitise import sanitise_html

    dirty = ('<p onclick="x" class="c">ok <script>bad()</script><b>bold</b>'
             '<a href=" JaVaScRiPt:alert(1)" title="t">l</a><a href="https://a.b/c?d=1&amp;e=2">'
             'm</a><img src="data:image/png;base64,AAAA" onerror="x"><style>p{}</style>'
             '<td style="background:url(javascript:x)">c</td><th style="text-align: right;">h</th>'
             '<!-- c --></p>')
    clean = sanitise_html(dirty)
    _assert_inert(clean)
    assert "bad()" not in clean and "p{}" not in clean  # script and style contents dropped
    assert "<b>bold</b>" in clean and '<a title="t">l</a>' in clean
    assert 'href="https://a.b/c?d=1&amp;e=2"' in clean
    assert '<img src="data:image/png;base64,AAAA">' in clean
    assert "<td>c</td>" in clean and '<th style="text-align: right;">h</th>' in clean
    assert "&lt;!-- c --&gt;" in clean


def test_markdown_to_html_keeps_entities_and_code() -> None:
    from glioseg.report.sanitise import markdown_to_html

    out = markdown_to_html("a &amp; b &lt;tag&gt;\n\n`x<y>`\n")
    assert "a &amp; b &lt;tag&gt;" in out and "<code>x&lt;y&gt;</code>" in out

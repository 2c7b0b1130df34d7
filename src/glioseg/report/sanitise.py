"""Markdown from a run folder made safe for ``report.html``.

A folder's ``.md`` files are content, not markup the report trusts: their raw HTML is shown as
text (python-markdown's raw-HTML handling is switched off), and what Markdown itself produces
passes an allow-list (``sanitise_html``: known tags and attributes, ``href``/``src`` only
relative or ``http(s)``/``mailto`` (``data:image/`` for images)), so no script, event handler
or ``javascript:`` link from a run folder reaches ``report.html``.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

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


def _kept_attrs(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    """The allow-listed attributes of ``tag`` with safe values, escaped, as ``' name="value"'``."""
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
    return "".join(kept)


class _Sanitiser(HTMLParser):
    """Collects the sanitised fragment in ``out``; ``dropping``: open script/style tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.dropping: list[str] = []

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], raw: str, close: bool) -> None:
        """An allow-listed start tag with its safe attributes; any other shown as text."""
        if self.dropping:
            return
        if tag in _DROP_CONTENT:
            self.dropping.append(tag)
            return
        if tag not in _ALLOWED_TAGS:
            self.out.append(html.escape(raw))
            return
        self.out.append(f"<{tag}{_kept_attrs(tag, attrs)}{' /' if close else ''}>")

    def handle_starttag(self, tag, attrs):
        self._start(tag, attrs, self.get_starttag_text() or f"<{tag}>", False)

    def handle_startendtag(self, tag, attrs):
        self._start(tag, attrs, self.get_starttag_text() or f"<{tag}/>", True)

    def handle_endtag(self, tag):
        if self.dropping:
            if tag == self.dropping[-1]:
                self.dropping.pop()
            return
        if tag in _ALLOWED_TAGS:
            self.out.append(f"</{tag}>")
        else:
            self.out.append(html.escape(f"</{tag}>"))

    def handle_data(self, data):
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def handle_comment(self, data):
        if not self.dropping:
            self.out.append(html.escape(f"<!--{data}-->"))

    def handle_decl(self, decl):
        self.out.append(html.escape(f"<!{decl}>"))

    def handle_pi(self, data):
        self.out.append(html.escape(f"<?{data}>"))

    def unknown_decl(self, data):
        self.out.append(html.escape(f"<![{data}]>"))


def sanitise_html(fragment: str) -> str:
    """``fragment`` with only allow-listed tags and attributes (``_ALLOWED_TAGS``, safe URLs
    and alignment styles); any other tag is shown as escaped text, comments and processing
    instructions likewise, and the content of ``script``/``style`` is dropped."""
    parser = _Sanitiser()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.out)


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


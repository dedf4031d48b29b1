"""Paragraph text of DocBook HTML pages (the Debian Handbook), shared by the clm and the reasoning data."""
from __future__ import annotations

from html.parser import HTMLParser

PARAGRAPH_CLASS = "para"


class _ParagraphParser(HTMLParser):
    """Text of every ``<div class="para">`` block: nested markup (a nested para too) flattened into it, ``<pre>``
    screens left out."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._divs: list[bool] = []  # per open <div>: whether it opened the paragraph being read
        self._parts: list[str] | None = None  # text of the open paragraph, None outside one
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            opens = self._parts is None and PARAGRAPH_CLASS in (dict(attrs).get("class") or "").split()
            self._divs.append(opens)
            if opens:
                self._parts = []
        elif tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._divs and self._divs.pop():
            if text := " ".join("".join(self._parts).split()):
                self.paragraphs.append(text)
            self._parts = None
        elif tag == "pre" and self._pre:
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._parts is not None and not self._pre:
            self._parts.append(data)


def html_paragraphs(markup: str) -> list[str]:
    """Whitespace-squashed, non-empty texts of the ``<div class="para">`` blocks of a DocBook HTML page, in order."""
    parser = _ParagraphParser()
    parser.feed(markup)
    parser.close()
    return parser.paragraphs

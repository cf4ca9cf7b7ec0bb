"""Runbook prose (their markdown) for people: HTML for the console, plain text for a terminal.

Raw HTML in a runbook's markdown is escaped, never passed through.

>>> markdown_text("**Purpose.** Find `x`.\\n\\nSecond *paragraph*.")
'Purpose. Find x.\\n\\nSecond paragraph.'
>>> "<strong>Purpose.</strong>" in markdown_html("**Purpose.** Find `x`.")
True
>>> purpose("**Purpose.** Find out why it is down: its state (and logs). Then more.")
'Find out why it is down.'
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from markdown_it import MarkdownIt

_MARKDOWN = MarkdownIt("commonmark", {"html": False})


def markdown_html(text: str) -> str:
    """Markdown as HTML; raw HTML in the text is escaped, not passed through."""
    return str(_MARKDOWN.render(text))


def markdown_text(text: str, width: int = 88) -> str:
    """Markdown as plain readable text: emphasis and code marks gone, paragraphs kept."""
    paragraphs = []
    for block in text.split("\n\n"):
        tokens = _MARKDOWN.parseInline(block.strip())
        plain = "".join(_plain(child) for token in tokens for child in token.children or [])
        if plain.strip():
            paragraphs.append(textwrap.fill(" ".join(plain.split()), width))
    return "\n\n".join(paragraphs)


def _plain(token: Any) -> str:
    if token.type in ("text", "code_inline"):
        return str(token.content)
    if token.type in ("softbreak", "hardbreak"):
        return " "
    return ""


_ASIDE = re.compile(r"\s*\([^()]*\)")


def purpose(description: str, width: int = 100) -> str:
    """One line saying what a runbook is for: the first sentence of its first paragraph,
    without its ``Purpose.`` label, asides in parentheses, or what follows a colon."""
    first = markdown_text(description.split("\n\n")[0], width=10**6)
    first = first.removeprefix("Purpose. ")
    while _ASIDE.search(first):
        first = _ASIDE.sub("", first)
    sentence = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0].split(": ")[0].rstrip(" .")
    line = sentence + "." if sentence else ""
    return line if len(line) <= width else line[: width - 1].rstrip() + "\u2026"

"""Visitor-chosen text (file names, model names from uploaded cards) shown safely inside Markdown."""

from __future__ import annotations

import re

MAX_NAME = 60  # characters of a visitor-chosen name shown on a page

# Every ASCII punctuation character may be backslash-escaped in Markdown (CommonMark), which
# turns links, emphasis, headings, HTML and Streamlit's :colour[...] / :emoji: syntax into text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=\"'&^%@])")


def plain(text: object, limit: int = MAX_NAME) -> str:
    """``text`` as plain words for st.markdown / st.caption: one line, at most ``limit`` characters, nothing active."""
    one_line = " ".join(str(text).split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)


def shape_text(shape: tuple[int, ...], sep: str = " × ", brackets: str = "") -> str:
    """A tensor shape in words: ``32 × 28 × 28`` by default, ``(32, 28, 28)`` with sep=", " and brackets="()"."""
    body = sep.join(str(d) for d in shape)
    return f"{brackets[0]}{body}{brackets[1]}" if len(brackets) == 2 else body


def code(text: object, limit: int = 300) -> str:
    """``text`` as an inline code span for Markdown: shown exactly as written, nothing in it active.

    Inside a code span Markdown is not interpreted (and backslashes are not escapes), so the text only
    needs its backticks and line breaks taken out.
    """
    one_line = " ".join(str(text).split()).replace("`", "'")
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return f"`{one_line}`"

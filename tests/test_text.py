"""Visitor-chosen text on the pages: shown as written, never interpreted as Markdown."""

from __future__ import annotations

from ui.text import code, plain


def test_plain_escapes_markdown_and_shortens():
    shown = plain("[click](http://evil.example) **bold** # title\nnext line", limit=200)
    assert "\\[click\\]\\(http\\:" in shown and "\\*\\*bold\\*\\*" in shown and "\n" not in shown
    assert len(plain("x" * 500)) == 60 and plain("x" * 500).endswith("…")


def test_code_keeps_text_exact_and_cannot_break_out_of_its_span():
    assert code("python -m cnn_core.train --data ../shared") == "`python -m cnn_core.train --data ../shared`"
    assert code("a `b` [c](d)") == "`a 'b' [c](d)`"  # no backtick left to end the span early
    assert code("line\nbreak") == "`line break`"

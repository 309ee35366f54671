"""ui/common.py: literal(), the one rule that makes a name Markdown source Streamlit shows exactly as typed.

CommonMark is checked with markdown-it-py (which Streamlit depends on); Streamlit's own additions (KaTeX, directives,
emoji, the logo, Material icons, arrows) run in the browser, so their patterns are restated here from Streamlit's
frontend (1.67, StreamlitMarkdown.tsx) and checked against what literal() returns."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ui.common import WORD_JOINER, literal  # noqa: E402

NASTY = [
    "![t](http://127.0.0.1:8799/p.png) $x^2$ *bold*",  # issue 19: a remote image, KaTeX, emphasis
    "![px](a.png)",
    "$x^2$",
    "$$\\int x$$ and $5 or $10",
    "**strong** __strong__ _em_ *em* ~~gone~~ ~gone~",
    "`code` ``more`` ```fence```",
    "<img src=x onerror=alert(1)> <http://127.0.0.1:8799/a> <b>bold</b> <!-- c -->",
    "[link](http://127.0.0.1:8799/) [ref][x] [x]: http://127.0.0.1:8799/ [^note]",
    "http://127.0.0.1:8799/p.png www.example.com me@example.com",
    "&amp; &copy; &#65; &#x41;",
    "# heading",
    "- item",
    "+ item",
    "* item",
    "1. first",
    "1) first",
    "> quote",
    "---",
    "***",
    "___",
    "===",
    "| a | b |",
    "[ ] task",
    "line\n# heading\n- item\n> quote\n===",
    "trailing backslash \\",
    "back\\slash \\* \\_ \\\\",
    ":red[red] :blue-background[x] :red-badge[b] :small[s] :help[tip] :color[c]{foreground=\"red\"} :shimmer[s]",
    ":material/home: :material_home: :material/thumb_up:",
    ":smile: :+1: :-1: :tada: 10:30:00",
    ":streamlit:",
    "a -> b <- c <-> d -- e >= f <= g ~= h",
    "-> start",
    "ends --",
    "{attr} | pipe ~ tilde ^ caret = equals",
    "café – naïve ✓ 写真.png",
]


def _text_nodes(source: str) -> str:
    """What CommonMark makes of `source`, provided it is one paragraph of plain text: that text."""
    tokens = MarkdownIt("commonmark").parse(source)
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], source
    kinds = {c.type for c in tokens[1].children or []}
    assert kinds <= {"text", "softbreak"}, (source, kinds)  # no link, image, emphasis, code, html, entity...
    return "".join("\n" if c.type == "softbreak" else c.content for c in tokens[1].children or [])


@pytest.mark.parametrize("name", NASTY)
def test_literal_round_trips_through_commonmark(name):
    source = literal(name)
    html = MarkdownIt("commonmark").render(source)
    shown = _text_nodes(source)
    assert shown.replace(WORD_JOINER, "") == name
    assert html == f"<p>{escapeHtml(shown)}</p>\n"


@pytest.mark.parametrize("name", NASTY)
def test_literal_leaves_nothing_for_streamlits_own_markdown(name):
    source = literal(name)
    text = _text_nodes(source)  # what Streamlit's plugins see in the text nodes
    # every character that could start a construct is escaped: directives (:name[...]), math ($), HTML, links...
    assert not re.search(r"(?<!\\)(?:\\\\)*[!#$&()*+\-.:<=>@\[\]_`{|}~]", source), source
    # Streamlit rewrites ":material/" in the source before parsing, then looks for ":material_name:" in the text
    assert ":material/" not in source
    assert not re.search(r":material_(\w+):", text, re.ASCII)
    assert ":streamlit:" not in text
    # the emoji plugin is only loaded when the source looks like it has a shortcode, and then rewrites text nodes
    assert not re.search(r":(?!material/|streamlit:)[\w+-][\w_+-]*:", source, re.ASCII)
    assert not re.search(r":\+1:|:-1:|:[\w-]+:", text, re.ASCII)
    # KaTeX is loaded when the source, without its escapes, still has a $
    assert "$" not in re.sub(r"\\[\\$`]", "", source)
    # arrows, dashes and signs between spaces become single characters
    for pair in ("<->", "->", "<-", "--", ">=", "<=", "~="):
        assert not re.search(rf"(^|\s){re.escape(pair)}(\s|$)", text), (pair, text)


def test_literal_keeps_plain_names_as_they_are():
    for name in ("cats", "Birds at the feeder", "photo 12", "Pets, 'old' ones; why? 100% / 2"):
        assert literal(name) == name
    assert literal("a.png") == "a\\.png" and literal(None) == "None"

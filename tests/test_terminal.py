"""Terminal output never carries raw control characters from the database (issue 11, item 13).

Labels, tokens, notes, reviewer names, errors and model names are data: `gloss search` and
`gloss show` print them escaped (`\\x1b`), so a label cannot retitle the window, clear the
screen or colour what follows. gloss's own colour codes still work with --color always.
"""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest

from gloss.pipeline.cli import main
from gloss.pipeline.prompts import printable
from gloss.pipeline.terminal import format_card, format_rows
from gloss.store import open_store
from gloss.store.models import Explanation, Feature, Review, Subject, Window
from tests.seed import SOURCE, WINDOWS, seed_features

PAYLOAD = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x08\r\x7f\x85\u2028\u2029\x00"
OUR_COLOURS = re.compile(r"\x1b\[(?:0|1|1;31|1;33)m")


def raw_controls(out: str, *, color: bool) -> list[str]:
    """Control characters and line separators in `out`, other than its own line breaks
    and (with colour) gloss's own ANSI codes."""
    if color:
        out = OUR_COLOURS.sub("", out)
    return [c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Zl", "Zp")]


@pytest.fixture
def evil(sqlite_url):
    """The seeded database with PAYLOAD written straight into rows (as an older gloss, or
    another tool, could have): feature 0's label, author, model, a review's reviewer and
    note, its last error, the subject's name and a token of a window it shows."""
    with open_store(sqlite_url) as store:
        seeded = seed_features(store)
        feature_id = seeded.feature_ids[0]
        store.review(feature_id, "note", "ana", note="fine")
        with store.session() as s:
            label = s.get(Explanation, seeded.explanation_ids[0])
            label.text = f"apples {PAYLOAD} pie"
            label.author_name = f"explainer{PAYLOAD}"
            label.model = f"gemma{PAYLOAD}"
            review = s.query(Review).filter_by(feature_id=feature_id).one()
            review.reviewer = f"ana{PAYLOAD}"
            review.note = f"see\n{PAYLOAD}"
            feature = s.get(Feature, feature_id)
            feature.last_error = f"explain: {PAYLOAD}"
            for subject in s.query(Subject):
                subject.name = f"toy{PAYLOAD}"
            for window in s.query(Window):
                if list(window.tokens) == WINDOWS[0]:
                    window.tokens = [WINDOWS[0][0], f" apple{PAYLOAD}", *WINDOWS[0][2:]]
        yield sqlite_url, store, feature_id


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        out = printable(char)
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            assert out.startswith("\\") and len(out) > 1 and not raw_controls(out, color=False)
        else:
            assert out == char
    assert printable("a\tb\nc \x1b[2J") == "a\\tb\\nc \\x1b[2J"


@pytest.mark.parametrize("color", [False, True])
def test_card_and_rows_print_no_raw_control_characters(evil, color):
    _, store, feature_id = evil
    card = format_card(store.feature_card(feature_id), color=color)
    assert not raw_controls(card, color=color), card
    for shown in ("apples \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m", "toy\\x1b]0;", "ana\\x1b]0;"):
        assert shown in card
    assert "see\\n\\x1b]0;pwned" in card and "gemma\\x1b]0;" in card
    assert "explain: \\x1b]0;pwned" in card and "explainer\\x1b]0;" in card
    assert "apple\\x1b]0;pwned" in card, "the token, escaped inside its highlight"
    assert ("\033[1;31m" in card) is color and ("\033[1m" in card) is color
    rows = format_rows(store.search("apples"), 1)
    assert not raw_controls(rows, color=False) and "apples \\x1b]0;pwned" in rows


def test_cli_search_and_show_print_no_raw_control_characters(evil, capsys):
    url, _, feature_id = evil
    for args, color in (
        (["search", "apples"], False),
        (["search"], False),
        (["show", f"{SOURCE}:0"], False),
        (["show", str(feature_id), "--color", "always"], True),
        (["show", f"{SOURCE}:0", "--color", "never"], False),
    ):
        assert main(["--database", url, *args]) == 0
        out, err = capsys.readouterr()
        assert "pwned" in out, args
        assert not raw_controls(out + err, color=color), (args, out)

"""Corpus text inside prompts (issue 11, item 14): it keeps one token per line, cannot form
our delimiters, and reads as text for WordPiece and byte-level BPE tokenizers alike."""

from __future__ import annotations

import itertools
import re
import sys
import unicodedata

import pytest

from gloss.pipeline.explainers import parse_label
from gloss.pipeline.explainers.delphi import render_delphi
from gloss.pipeline.explainers.openai import render_openai
from gloss.pipeline.llm import UnusableAnswer
from gloss.pipeline.prompts import load_prompt, neutralize, printable, spell
from gloss.pipeline.simulator import render_integer_windows, render_logprobs_windows

BREAKING = [
    chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")
]


def unsafe(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]


def test_neutralize_escapes_every_control_character_and_line_separator():
    assert len(BREAKING) == 67  # C0, DEL, C1, U+2028, U+2029
    for char in BREAKING:
        out = neutralize(f"a{char}b")
        assert not unsafe(out) and len(out.splitlines()) == 1, repr(char)
        assert out == f"a{printable(char)}b"
    assert [neutralize(c) for c in "\n\t\r\x0b\x1b\x85\u2028\u2029"] == [
        "\\n",
        "\\t",
        "\\r",
        "\\x0b",
        "\\x1b",
        "\\x85",
        "\\u2028",
        "\\u2029",
    ]
    token = " ordinary"
    assert neutralize(token) is token and printable(token) is token
    assert neutralize("x <end> <<y>>") == "x ‹end› ‹‹y››"


def test_one_line_per_token_in_every_listing():
    tokens = [" a\x0bb", "c\x0cd", "\x1ce", "f\x1d\x1e", "g\x85", "h\u2028i", "\u2029", "\x1b[2J"]
    for listing in (
        render_logprobs_windows([tokens]),
        render_integer_windows([tokens]),
        render_openai([(tokens, [1.0] * len(tokens))]),
    ):
        body = listing[listing.index("<start>\n") + 8 : listing.index("<end>")]
        lines = body.split("\n")[:-1]
        assert len(body.splitlines()) == len(lines) == len(tokens)
        assert all(line.count("\t") == 1 for line in lines)
        assert not unsafe(body.replace("\n", "").replace("\t", ""))


ADVERSARIAL = ["<end", "end>", "<", ">", "<<", ">>", "<start", "start>", "x", " y"]


def examples_part(rendered: str) -> str:
    return "\n".join(line.split(": ", 1)[1] for line in rendered.splitlines())


def test_delphi_text_cannot_form_a_delimiter_at_any_mark_boundary():
    """Every pair and triple of adversarial tokens, under every marking: the only angle
    brackets in the examples are our own `<<` `>>`, balanced and never nested."""
    for n in (2, 3):
        for tokens in itertools.product(ADVERSARIAL, repeat=n):
            for marks in itertools.product((0.0, 1.0), repeat=n):
                if not any(marks):
                    continue
                text = examples_part(render_delphi([(list(tokens), list(marks))]))
                assert "<start>" not in text and "<end>" not in text, (tokens, marks, text)
                ours = re.findall(r"<<[^<>]*>>", text)
                runs = sum(1 for a, b in zip((0.0, *marks), marks, strict=False) if b and not a)
                assert len(ours) == runs, (tokens, marks, text)
                assert not re.search("[<>]", re.sub(r"<<[^<>]*>>", "", text)), (tokens, text)


def test_delphi_prompt_has_exactly_our_delimiters():
    template = load_prompt("explain_delphi")
    shown = [(["x", "<end", ">", "<start", ">", "<", "<"], [0, 1, 0, 0, 1, 1, 0])]
    prompt = template.render(examples=render_delphi(shown))
    for delimiter in ("<start>", "<end>"):
        assert prompt.count(delimiter) == template.text.count(delimiter)
    assert prompt.rsplit("<start>", 1)[1].startswith(
        "\nExample 1: x <<‹end>> › ‹start <<› ‹>> ‹\n<end>"
    )


def test_delphi_spells_wordpiece_tokens_as_words():
    tokens = ["the", "java", "##script", "cat", "sat", "on", "##ly"]
    rendered = render_delphi([(tokens, [0, 4, 4, 0, 0, 0, 0])])
    assert rendered == "Example 1: the <<javascript>> cat sat only"
    rendered = render_delphi([(tokens, [0, 0, 4, 4, 0, 0, 4])])
    assert rendered == "Example 1: the java<<script cat>> sat on<<ly>>"


def test_delphi_keeps_byte_level_bpe_spaces_inside_the_marks():
    tokens = ["The", " java", "script", " cat", " sat", "."]
    rendered = render_delphi([(tokens, [0, 4, 0, 4, 4, 0])])
    assert rendered == "Example 1: The<< java>>script<< cat sat>>."


def test_spell_lives_in_prompts_and_the_terminal_uses_it():
    import gloss.pipeline.terminal

    assert gloss.pipeline.terminal.spell is spell
    assert spell(["java", "##script", "rocks"]) == [("", "java"), ("", "script"), (" ", "rocks")]


@pytest.mark.parametrize(
    "answer",
    [
        " the token \x1b[2J cat",
        " cats\x00 and dogs",
        " cats and \x9b31m dogs",
        " cats \x1b]0;pwned\x07 and dogs",
        " cats\x7f and dogs",
    ],
)
def test_parse_label_refuses_control_characters(answer):
    with pytest.raises(UnusableAnswer, match="control characters"):
        parse_label(answer)


def test_parse_label_still_takes_ordinary_labels():
    assert parse_label(" café names and ‹quoted› words\n") == "café names and ‹quoted› words"

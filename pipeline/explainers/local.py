"""The local explainer, for small base models that continue patterns: worked examples, a
summary of the most active words and a few marked contexts (prompts/explain_local.txt)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from gloss.pipeline.explainers.base import Explainer, Shown
from gloss.pipeline.llm import UnusableAnswer
from gloss.pipeline.prompts import neutralize, spell
from gloss.store import ExampleOut


class LocalExplainer(Explainer):
    style = "local"

    def render(self, shown: Shown, examples: Sequence[ExampleOut]) -> dict[str, str]:
        parts = render_local(shown)
        if not parts["contexts"]:
            raise UnusableAnswer("the explain-split examples hold no words to show the explainer")
        return parts


_ACTIVE_SHARE = 0.5  # a word is active where it reaches this share of its window's peak


def _words(tokens: Sequence[str], acts: Sequence[float]) -> list[tuple[str, float]]:
    """A window as (word, activation) pairs: WordPiece `##` pieces and byte-level BPE pieces
    glued into whole words (a word's activation is its strongest piece's), punctuation
    marks kept as words of their own."""
    words: list[tuple[str, float]] = []
    glue = False  # may the next piece join the last word?
    for (gap, token), act in zip(spell(list(tokens)), acts, strict=True):
        text = token.strip()
        if not text:
            glue = False
            continue
        alnum = text[0].isalnum()
        if words and glue and alnum and not gap and not token[:1].isspace():
            word, best = words[-1]
            words[-1] = (word + text, max(best, act))
        else:
            words.append((text, act))
        glue = text[-1].isalnum()
    return words


def render_local(
    shown: Sequence[tuple[list[str], list[float]]],
    *,
    max_words: int = 8,
    max_contexts: int = 5,
    context_words: int = 14,
) -> dict[str, str]:
    """The `contexts`, `words` and `top` of the local-model prompt (prompts/explain_local.txt).

    `contexts`: the strongest windows, each cut to `context_words` words around its peak,
    one per line, the active words (half of the window's peak or more) marked <<like this>>.
    `words`: the words active most often, most often first, e.g. "pie, apple, baked"
    (without counts: a small model copies them into its label). `top`: the leading ones,
    those active at least half as often as the first, at most three; the prompt asks for
    a "Label for {top}:", which keeps a small model from repeating the last worked label.
    Corpus text is neutralised as in render_delphi: its `<` and `>` become `‹` `›`.
    """
    counts: dict[str, int] = defaultdict(int)
    weight: dict[str, float] = defaultdict(float)
    spelled: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    lines = []
    for tokens, acts in shown:
        words = _words(tokens, acts)
        peak = max((a for _, a in words), default=0.0)
        if peak <= 0:
            continue
        active = [a >= _ACTIVE_SHARE * peak for _, a in words]
        for (word, act), on in zip(words, active, strict=True):
            if on:
                key = word.lower()
                counts[key] += 1
                weight[key] += act
                spelled[key][word] += 1
        if len(lines) >= max_contexts:
            continue
        top = max(range(len(words)), key=lambda i: words[i][1])
        start = max(0, min(top - context_words // 2, len(words) - context_words))
        parts = []
        for i in range(start, min(len(words), start + context_words)):
            text = neutralize(words[i][0], brackets=True)
            parts.append(f"<<{text}>>" if active[i] else text)
        line = "- " + " ".join(parts)
        if line not in lines:  # a corpus that repeats itself shows each context once
            lines.append(line)
    ranked = sorted(counts, key=lambda k: (-counts[k], -weight[k], k))[:max_words]
    shown_words = []
    for key in ranked:
        word = max(spelled[key].items(), key=lambda kv: (kv[1], kv[0]))[0]
        text = neutralize(word, brackets=True)
        if not any(c.isalnum() for c in text):  # punctuation, quoted: "?" or '"'
            text = f"'{text}'" if '"' in text else f'"{text}"'
        shown_words.append(text)
    return {
        "words": ", ".join(shown_words),
        "top": ", ".join(
            w
            for w, k in zip(shown_words[:3], ranked, strict=False)
            if 2 * counts[k] >= counts[ranked[0]]
        ),
        "contexts": "\n".join(lines),
    }

"""The delphi explainer (Paulo et al. 2024): each window as text with its activating
tokens in <<marks>> (prompts/explain_delphi.txt)."""

from __future__ import annotations

from collections.abc import Sequence

from gloss.pipeline.explainers.base import Explainer, Shown, normalized
from gloss.pipeline.prompts import neutralize, spell
from gloss.store import ExampleOut


class DelphiExplainer(Explainer):
    style = "delphi"

    def render(self, shown: Shown, examples: Sequence[ExampleOut]) -> dict[str, str]:
        return {"examples": render_delphi(shown)}


def render_delphi(shown: Sequence[tuple[list[str], list[float]]]) -> str:
    """Each window as text with its activating tokens (>= 1/10 of the peak) in <<marks>>.

    Tokens are spelled as text (WordPiece pieces glued, words spaced); every `<` and `>`
    of the corpus becomes `‹` `›`, so the only angle brackets in the examples are ours.
    """
    top = max((max(acts) for _, acts in shown), default=0.0)
    lines = []
    for number, (tokens, acts) in enumerate(shown, 1):
        parts, run, inside = [], [], False
        for (gap, token), level in zip(spell(tokens), normalized(acts, top), strict=True):
            active = level >= 1
            if active != inside:
                if run:
                    text = neutralize("".join(run), brackets=True)
                    parts.append(f"<<{text}>>" if inside else text)
                parts.append(gap)  # a WordPiece word's space stays outside the marks
                run, inside = [token], active
            else:
                run.append(gap + token)
        if run:
            text = neutralize("".join(run), brackets=True)
            parts.append(f"<<{text}>>" if inside else text)
        lines.append(f"Example {number}: {''.join(parts)}")
    return "\n".join(lines)

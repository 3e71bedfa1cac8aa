"""The contrastive explainer: the delphi prompt plus near misses, windows where the
feature stays silent that read most like the ones where it fires.

A label must then say what sets the activating windows apart, not only what they are
about ("the word 'cat' as a pet", not "cats"). Near misses are the feature's silent
explain-split windows (`[mining] silent_explain`) closest, by sentence embedding (the
bundled MiniLM), to the mean of the activating windows shown (prompts/explain_contrastive.txt).
"""

from __future__ import annotations

from collections.abc import Sequence

from gloss.pipeline.explainers.base import Explainer, Shown, cut
from gloss.pipeline.explainers.delphi import render_delphi
from gloss.pipeline.prompts import neutralize, spell
from gloss.store import ExampleOut


class ContrastiveExplainer(Explainer):
    style = "contrastive"

    def render(self, shown: Shown, examples: Sequence[ExampleOut]) -> dict[str, str]:
        silent = [e for e in examples if e.split == "explain" and e.max_act <= 0]
        misses = near_misses(
            shown, silent, self.config.near_misses, self.config.max_tokens_per_example
        )
        lines = [f"Near miss {n}: {text}" for n, text in enumerate(misses, 1)]
        return {"examples": render_delphi(shown), "near_misses": "\n".join(lines)}


def near_misses(shown: Shown, silent: Sequence[ExampleOut], count: int, limit: int) -> list[str]:
    """The `count` silent windows most similar to the mean of the shown ones, as text."""
    from gloss.store.embedder import closest

    candidates = [_text(cut(e, limit)[0]) for e in silent]
    return [candidates[i] for i in closest([_text(t) for t, _ in shown], candidates, count)]


def _text(tokens: Sequence[str]) -> str:
    return neutralize("".join(gap + token for gap, token in spell(list(tokens))), brackets=True)

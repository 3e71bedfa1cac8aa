"""The OpenAI explainer (Bills et al. 2023): each window as token<TAB>activation lines,
activations on a 0..10 scale (prompts/explain_openai.txt)."""

from __future__ import annotations

from collections.abc import Sequence

from gloss.pipeline.explainers.base import Explainer, Shown, normalized
from gloss.pipeline.prompts import neutralize
from gloss.store import ExampleOut


class OpenAIExplainer(Explainer):
    style = "openai"

    def render(self, shown: Shown, examples: Sequence[ExampleOut]) -> dict[str, str]:
        return {"examples": render_openai(shown)}


def render_openai(shown: Sequence[tuple[list[str], list[float]]]) -> str:
    top = max((max(acts) for _, acts in shown), default=0.0)
    blocks = []
    for tokens, acts in shown:
        lines = "".join(
            f"{neutralize(t)}\t{v}\n" for t, v in zip(tokens, normalized(acts, top), strict=True)
        )
        blocks.append(f"<start>\n{lines}<end>")
    return "\n".join(blocks)

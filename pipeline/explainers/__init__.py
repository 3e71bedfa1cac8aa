"""Explainers: one module each behind `Explainer` (base.py); adding one is adding a file.

    openai       token<TAB>activation listings (Bills et al. 2023)
    delphi       text with activating tokens <<marked>> (Paulo et al. 2024)
    local        worked examples and active words, for small base models (the bundled one)
    contrastive  delphi plus near misses: similar windows where the feature stays silent
    output       delphi plus the feature's output effect (Gur-Arieh et al. 2025): tokens
                 it promotes and suppresses, its direction read through the unembedding,
                 the loss without it; needs `gloss effects` (causal subjects)
    baseline     no LLM: the tokens with the highest activation lift (baseline.py)

`make_explainer` builds the one an `ExplainerConfig` names (its style resolved first).
"""

from __future__ import annotations

from gloss.pipeline.explainers.base import Explainer, effects_of, parse_label
from gloss.pipeline.explainers.contrastive import ContrastiveExplainer
from gloss.pipeline.explainers.delphi import DelphiExplainer
from gloss.pipeline.explainers.local import LocalExplainer
from gloss.pipeline.explainers.openai import OpenAIExplainer
from gloss.pipeline.explainers.output import OutputExplainer
from gloss.pipeline.settings import ExplainerConfig

EXPLAINERS: dict[str, type[Explainer]] = {
    cls.style: cls
    for cls in (
        OpenAIExplainer,
        DelphiExplainer,
        LocalExplainer,
        ContrastiveExplainer,
        OutputExplainer,
    )
}


def make_explainer(config: ExplainerConfig) -> Explainer:
    """The explainer of `config.style` (resolve `auto` with `for_endpoint` first)."""
    style = "openai" if config.style == "auto" else config.style
    return EXPLAINERS[style](config)


__all__ = ["EXPLAINERS", "Explainer", "effects_of", "make_explainer", "parse_label"]

"""The output-centric explainer (Gur-Arieh et al. 2025): the delphi windows, then what the
feature does to the model's output, read from its effects (pipeline/effects):

- TokenChange: the next tokens whose log-probability rises and falls most when the
  feature is raised (`output` details `promoted`, `suppressed`);
- VocabProj: the tokens its decoder direction reads as through the unembedding
  (`vocab_up`, `vocab_down`);
- the rise in next-token loss on its top explain windows when it is ablated (`ablation`).

An input-only label says what a feature fires on; with the output effect beside the windows
the label can also say what the feature makes the model say, which the paper finds
describes features best. Only explain-split figures are shown: the ablation's
random-window figure stays out, as every validation and holdout window does. A feature
without effects (not measured yet, or an encoder's) cannot be explained in this style:
the prompt refuses it and the stage records the failure (prompts/explain_output.txt).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gloss.pipeline.explainers.base import Effects, Explainer
from gloss.pipeline.explainers.delphi import render_delphi
from gloss.pipeline.llm import UnusableAnswer
from gloss.pipeline.prompts import neutralize
from gloss.store import ExampleOut, ScoreInfo

NO_EFFECTS = "no output effects for this feature: run gloss effects first (causal subjects only)"
TOKENS_SHOWN = 10  # per list; gloss effects keeps [effects] top (10) of each
# How the effect lines start: an answer that starts so continues the prompt, not a label.
_EFFECT_LINES = ("raised by", "raised,", "its direction through", "loss without it")
_LABEL_SLOT = re.compile(r"^\s*label of feature \d+\s*:", re.IGNORECASE)  # an answer repeating it


class OutputExplainer(Explainer):
    style = "output"
    uses_effects = True

    def prompt(self, examples: Sequence[ExampleOut], effects: Effects | None = None) -> str:
        """The windows as delphi shows them, then the output effect; UnusableAnswer (a
        recorded failure) when the feature has no output effect to show."""
        output = (effects or {}).get("output")
        if output is None:
            raise UnusableAnswer(NO_EFFECTS)
        ablation = (effects or {}).get("ablation")
        return self.template.render(
            examples=render_delphi(self.shown(examples)), effects=render_effects(output, ablation)
        )

    def parse(self, text: str) -> str:
        """As every style parses, and an answer that goes on listing effects is refused."""
        label = super().parse(_LABEL_SLOT.sub("", text or "", count=1))
        if label.lower().startswith(_EFFECT_LINES):
            raise UnusableAnswer(f"the explainer answer echoes the prompt, not a label: {label!r}")
        return label


def render_effects(output: ScoreInfo, ablation: ScoreInfo | None) -> str:
    """The effect lines of the prompt: TokenChange, VocabProj, then the top-window loss."""
    details = output.details
    scale = details.get("scale")
    raised = f"Raised by {scale:g}x its peak" if isinstance(scale, int | float) else "Raised"
    if "promoted" in details:
        lines = [
            f"{raised}, it promotes: {_changes(details['promoted'])}",
            f"{raised}, it suppresses: {_changes(details.get('suppressed'))}",
        ]
    else:
        lines = [f"{raised}, its next tokens: not measured{_reason(details)}"]
    lines.append(
        f"Its direction through the output layer: up {_tokens(details.get('vocab_up'))}; "
        f"down {_tokens(details.get('vocab_down'))}"
    )
    lines.append(_loss(ablation))
    return "\n".join(lines)


def quoted(token: str) -> str:
    """A vocabulary token as the prompt shows it: repr-quoted, so its spaces are visible
    and it can neither break a line nor form one of our delimiters."""
    return neutralize(repr(str(token)))


def _changes(pairs: Any) -> str:
    """' France' +1.65, ' Italy' +1.21: tokens with their change in log-probability."""
    pairs = (pairs or [])[:TOKENS_SHOWN]
    return ", ".join(f"{quoted(token)} {float(delta):+.2f}" for token, delta in pairs) or "none"


def _tokens(pairs: Any) -> str:
    """The tokens of VocabProj's (token, logit) pairs; the logits' scale means nothing to a
    reader, their order does."""
    return ", ".join(quoted(token) for token, _ in (pairs or [])[:TOKENS_SHOWN]) or "none"


_ABLATED = {"zero": " (zeroed)", "mean": " (set to its mean)"}


def _loss(ablation: ScoreInfo | None) -> str:
    """The loss the model suffers without the feature, on its top explain windows only."""
    if ablation is None:
        return "Loss without it: not measured"
    if ablation.value is None:
        return f"Loss without it: not measured{_reason(ablation.details)}"
    how = _ABLATED.get(str(ablation.details.get("ablation")), "")
    return f"Loss without it{how}: {ablation.value:+.3f} nats per token on its top examples"


def _reason(details: dict[str, Any]) -> str:
    reason = details.get("reason")
    return f" ({neutralize(str(reason))})" if reason else ""

"""Detection: does the label tell the windows where the feature fires from those where it does not?

The LLM reads the label and a batch of windows, active and silent shuffled together, and
answers 1 (active) or 0 per window. The score is balanced accuracy (chance 0.5, whatever
the share of active windows); where the endpoint returns logprobs, the details also
hold the AUC of P(1). Delphi's "detection" (Paulo et al. 2024), Neuronpedia's
eleuther_recall.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

from gloss.pipeline.prompts import load_prompt
from gloss.pipeline.scorers.base import (
    Outcome,
    Scorer,
    Windows,
    cut,
    label_text,
    list_grammar,
    numbered,
    parse_list,
    window_text,
    yes_probabilities,
)
from gloss.pipeline.scoring import auc, balanced_accuracy

TOP_LOGPROBS = 5


class Detection(Scorer):
    method = "detection"

    @property
    def logprobs(self) -> bool:
        return self.endpoint is not None and self.endpoint.logprobs

    def __init__(self, config, endpoint, client=None):
        super().__init__(config, endpoint, client)
        self.prompt = load_prompt(config.detection_prompt or "detect")

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        assert label is not None and self.prompt is not None
        active, silent = windows.active, windows.silent
        if not active or not silent:
            return Outcome.undefined(
                f"detection needs active and silent windows, got {len(active)} and {len(silent)}"
            )
        shown = active + silent
        random.Random(seed).shuffle(shown)
        outcome = Outcome(None)
        said: list[int] = []
        p_yes: list[float] | None = []
        per_call = self.config.windows_per_call
        for start in range(0, len(shown), per_call):
            batch = shown[start : start + per_call]
            texts = [window_text(cut(e, self.config.max_tokens_per_window)[0]) for e in batch]
            prompt = self.prompt.render(explanation=label_text(label), examples=numbered(texts))
            grammar = {"grammar": list_grammar(len(batch), '"0" | "1"')} if self.grammar else {}
            answer, probabilities = await self.ask(
                outcome,
                prompt,
                partial(_answer, n=len(batch)),
                max_tokens=2 * len(batch) + 8,
                **grammar,
                **({"logprobs": TOP_LOGPROBS} if self.logprobs else {}),
            )
            said += answer
            p_yes = p_yes + probabilities if p_yes is not None and probabilities else None
        truth = [e.max_act > 0 for e in shown]
        outcome.value, reason = balanced_accuracy(truth, [s == 1 for s in said])
        details: dict[str, Any] = {
            "n_active": len(active),
            "n_silent": len(silent),
            "examples": [
                {"window_id": e.window_id, "kind": e.kind, "active": t, "said": s}
                | ({"p": round(p_yes[i], 4)} if p_yes else {})
                for i, (e, t, s) in enumerate(zip(shown, truth, said, strict=True))
            ],
        }
        if reason:
            details["reason"] = reason
        if p_yes:
            details["auc"], auc_reason = auc(truth, p_yes)
            if auc_reason:
                details["auc_reason"] = auc_reason
        else:
            details["auc"] = None
            details["auc_reason"] = (
                "the endpoint returned no logprobs for the answer"
                if self.logprobs
                else "the endpoint gives no logprobs (logprobs = false)"
            )
        outcome.details = details
        return outcome


def _answer(response: dict[str, Any], n: int) -> tuple[list[int], list[float] | None]:
    return parse_list(response, n, {0, 1}), yes_probabilities(response, n)

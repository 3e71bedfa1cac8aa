"""Fuzzing: does the label say *which tokens* the feature fires on?

Each active window is shown once with tokens marked <<like this>>: half of them (chosen
at random) marked where the feature is active, the others with as many tokens marked at
random elsewhere. The LLM answers 1 (the marks fit the label) or 0 per window; the
score is balanced accuracy. Delphi's "fuzzing" (Paulo et al. 2024), Neuronpedia's
eleuther_fuzz.
"""

from __future__ import annotations

import random
from functools import partial

from gloss.pipeline.prompts import load_prompt
from gloss.pipeline.scorers.base import (
    Outcome,
    Scorer,
    Windows,
    active_marks,
    cut,
    label_text,
    list_grammar,
    numbered,
    parse_list,
    window_text,
)
from gloss.pipeline.scoring import balanced_accuracy


class Fuzzing(Scorer):
    method = "fuzzing"

    def __init__(self, config, endpoint, client=None):
        super().__init__(config, endpoint, client)
        self.prompt = load_prompt(config.fuzzing_prompt or "fuzz")

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        assert label is not None and self.prompt is not None
        rng = random.Random(seed)
        shown = windows.active
        if len(shown) < 2:
            return Outcome.undefined(f"fuzzing needs 2 or more active windows, got {len(shown)}")
        rng.shuffle(shown)
        right = set(rng.sample(range(len(shown)), (len(shown) + 1) // 2))
        marked = []
        for i, example in enumerate(shown):
            tokens, acts = cut(example, self.config.max_tokens_per_window)
            marks = active_marks(acts)
            if i not in right:
                marks = _random_marks(marks, rng)
            marked.append(window_text(tokens, marks))
        outcome = Outcome(None)
        said: list[int] = []
        per_call = self.config.windows_per_call
        for start in range(0, len(marked), per_call):
            batch = marked[start : start + per_call]
            prompt = self.prompt.render(explanation=label_text(label), examples=numbered(batch))
            grammar = {"grammar": list_grammar(len(batch), '"0" | "1"')} if self.grammar else {}
            said += await self.ask(
                outcome,
                prompt,
                partial(parse_list, n=len(batch), allowed={0, 1}),
                max_tokens=2 * len(batch) + 8,
                **grammar,
            )
        truth = [i in right for i in range(len(shown))]
        outcome.value, reason = balanced_accuracy(truth, [s == 1 for s in said])
        outcome.details = {
            "n_windows": len(shown),
            "examples": [
                {"window_id": e.window_id, "kind": e.kind, "marks_right": t, "said": s}
                for e, t, s in zip(shown, truth, said, strict=True)
            ],
        } | ({"reason": reason} if reason else {})
        return outcome


def _random_marks(marks: list[bool], rng: random.Random) -> list[bool]:
    """As many marks as `marks` has, placed at random on other tokens where there are enough."""
    count = max(1, sum(marks))
    others = [i for i, m in enumerate(marks) if not m]
    pool = others if len(others) >= count else list(range(len(marks)))
    chosen = set(rng.sample(pool, min(count, len(pool))))
    return [i in chosen for i in range(len(marks))]

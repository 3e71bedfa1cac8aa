"""Intruder detection: are the feature's activating windows about one thing?

No label is involved: each trial shows `intruder_shown` windows where the feature fires
(drawn across its activation range) and one silent window at a random place, and the
LLM names the one that does not belong. All trials go in one call; the score is the
share of trials it got right (chance is 1 / (shown + 1)). A measure of the feature
itself (Paulo & Belrose 2025), stored in feature_scores and shown apart from the label
scores.
"""

from __future__ import annotations

import random

from gloss.pipeline.prompts import load_prompt
from gloss.pipeline.scorers.base import (
    Outcome,
    Scorer,
    Windows,
    cut,
    list_grammar,
    numbered,
    parse_list,
    window_text,
)


class Intruder(Scorer):
    method = "intruder"
    judges = "feature"

    def __init__(self, config, endpoint, client=None):
        super().__init__(config, endpoint, client)
        self.prompt = load_prompt(config.intruder_prompt or "intruder")

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        assert self.prompt is not None
        rng = random.Random(seed)
        shown, trials = self.config.intruder_shown, self.config.intruder_trials
        active, silent = windows.active, windows.silent
        if len(active) < shown or not silent:
            return Outcome.undefined(
                f"intruder needs {shown} active and 1 silent window, got {len(active)} and "
                f"{len(silent)}"
            )
        sets, answers, blocks = [], [], []
        for n in range(1, trials + 1):
            chosen = rng.sample(active, shown)
            place = rng.randrange(shown + 1)
            chosen.insert(place, rng.choice(silent))
            texts = [window_text(cut(e, self.config.max_tokens_per_window)[0]) for e in chosen]
            blocks.append(f"Set {n}:\n{numbered(texts)}")
            sets.append([e.window_id for e in chosen])
            answers.append(place + 1)
        outcome = Outcome(None)
        numbers = set(range(1, shown + 2))
        item = " | ".join(f'"{n}"' for n in sorted(numbers, reverse=True))
        grammar = {"grammar": list_grammar(trials, item)} if self.grammar else {}
        picked = await self.ask(
            outcome,
            self.prompt.render(sets="\n\n".join(blocks)),
            lambda response: parse_list(response, trials, numbers),
            max_tokens=3 * trials + 8,
            **grammar,
        )
        right = [p == a for p, a in zip(picked, answers, strict=True)]
        outcome.value = sum(right) / trials
        outcome.details = {
            "chance": 1 / (shown + 1),
            "trials": [
                {"window_ids": s, "intruder": a, "said": p}
                for s, a, p in zip(sets, answers, picked, strict=True)
            ],
        }
        return outcome

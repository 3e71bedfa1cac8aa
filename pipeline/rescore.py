"""Re-score one label (typically a reviewer's edit), on demand.

The review app's "re-score" button and `gloss label --rescore` call `rescore`; it runs
the stage runner of `gloss score` (`pipeline.labeling`) on that feature, with the
scorers `scoring` names (simulation by default), on the held-out windows only, and
replaces their earlier scores of the label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gloss.store import ExplanationInfo, InputError, LLMError, Store
from gloss.store.statuses import CURRENT_STATUSES


def rescore(
    store: Store,
    explanation_id: int,
    llm: Any = None,
    simulator: Any = None,
    on_estimate: Callable[[str], None] | None = None,
    scoring: Any = None,
) -> float | None:
    """Score the current label `explanation_id` again; returns its primary score.

    `llm` is a pipeline.llm.LLMConfig (default: $OPENAI_BASE_URL, else the bundled
    local model). None means the score is undefined (the reason is stored with it).
    `on_estimate` gets one line saying how much the call will read and write before
    it starts: on a small local model it can take many minutes.
    """
    from gloss.pipeline.labeling import score_features
    from gloss.pipeline.settings import LLMConfig, ScoringConfig, SimulatorConfig

    explanation = store.explanation(explanation_id)
    if explanation.status not in CURRENT_STATUSES:
        raise InputError(
            f"label #{explanation_id} is {explanation.status}; only a feature's current "
            "label can be re-scored"
        )
    llm = llm or LLMConfig()
    simulator = simulator or SimulatorConfig()
    scoring = scoring or ScoringConfig()
    if on_estimate is not None:
        on_estimate(estimate(store, explanation, llm.simulator, simulator))
    before = {s.id for s in explanation.scores}
    summary = score_features(
        store, [explanation.feature_id], llm, simulator=simulator, scoring=scoring, rescore=True
    )
    fresh = [
        s
        for s in store.explanation(explanation_id).scores
        if s.method == scoring.primary and s.id not in before
    ]
    if not fresh:
        reason = summary.failures[0]["error"] if summary.failures else "no score was written"
        raise LLMError(f"re-scoring label #{explanation_id} failed: {reason}")
    return fresh[-1].value


def estimate(store: Store, explanation: ExplanationInfo, endpoint: Any, simulator: Any) -> str:
    """What one simulation call of this label will cost: windows, tokens to read and write."""
    from gloss.pipeline.llm import LOCAL
    from gloss.pipeline.simulator import render_integer_windows, render_logprobs_windows

    local = endpoint.grammar or endpoint.resolved_url() == LOCAL
    method = simulator.method
    if method == "auto":
        method = "integers" if local else "logprobs"
    kinds = tuple(simulator.kinds)
    windows = [
        e.tokens
        for e in store.examples(explanation.feature_id, "holdout")
        if e.kind.split(":", 1)[0] in kinds
    ]
    render = render_integer_windows if method == "integers" else render_logprobs_windows
    template = dataclasses.replace(simulator, method=method).template()
    prompt = template.render(explanation=explanation.text, windows=render(windows))
    tokens = sum(len(w) for w in windows)
    write = 1 if method == "logprobs" else 4 * tokens + 8 * len(windows) + 16
    where = "the bundled local model" if local else f"{endpoint.model}"
    return (
        f"re-scoring label #{explanation.id} with {where} ({method}): {len(windows)} held-out "
        f"windows, {tokens} tokens to predict; about {len(prompt) // 4:,} prompt tokens to "
        f"read and up to {write:,} to write"
        + ("; on a small CPU this can take many minutes" if local else "")
    )

"""Re-score one label (typically a reviewer's edit) with the simulator, on demand.

The review app's "re-score" button and `gloss label --rescore` call `rescore`; it runs
the same simulator and scorer as `gloss score`, on the feature's held-out windows only.
"""

from __future__ import annotations

from typing import Any

from store import GlossError, InputError, LLMError, Store

CURRENT = ("proposed", "accepted")


def rescore(
    store: Store, explanation_id: int, llm: Any = None, simulator: Any = None
) -> float | None:
    """Simulate the current label `explanation_id` and store its score; returns the value.

    `llm` is a pipeline.llm.LLMConfig (default: $OPENAI_BASE_URL, else the bundled
    local model). None means the score is undefined (the reason is stored with it).
    """
    try:
        from pipeline.explainer import score_features
        from pipeline.llm import LLMConfig
    except ImportError:
        raise GlossError(
            "re-scoring is not available in this build: it needs the simulator "
            "(pipeline.explainer / pipeline.simulator)"
        ) from None
    explanation = store.explanation(explanation_id)
    if explanation.status not in CURRENT:
        raise InputError(
            f"label #{explanation_id} is {explanation.status}; only a feature's current "
            "label can be re-scored"
        )
    before = {s.id for s in explanation.scores}
    kwargs = {"simulator": simulator} if simulator is not None else {}
    summary = score_features(
        store, [explanation.feature_id], llm or LLMConfig(), force=True, **kwargs
    )
    fresh = [
        s
        for s in store.explanation(explanation_id).scores
        if s.id not in before and s.method == "simulation"
    ]
    if not fresh:
        reason = summary.failures[0]["error"] if summary.failures else "no score was written"
        raise LLMError(f"re-scoring label #{explanation_id} failed: {reason}")
    return fresh[-1].value

"""Re-score one label (typically a reviewer's edit) with the simulator, on demand."""

from __future__ import annotations

from store import GlossError, Store


def rescore(store: Store, explanation_id: int) -> float | None:
    """Simulate the explanation on its feature's held-out examples and store the score."""
    raise GlossError(
        "re-scoring is not available in this build: it needs the simulator "
        "(pipeline.simulator) and a configured simulator LLM"
    )

"""`gloss fires`: run the subject model on a text and list, per token, the labeled features that fire most.

This answers "what does the model see in *apple* here?" with the database's labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import GlossError, Store


@dataclass(frozen=True)
class FeatureFire:
    feature_id: int
    ref: str
    activation: float
    label: str | None
    score: float | None


@dataclass(frozen=True)
class TokenFires:
    position: int
    token: str
    features: list[FeatureFire]


def fires(store: Store, text: str, *, source: str | None = None, top: int = 5) -> list[TokenFires]:
    """Per token of `text`, the `top` features of `source` with the highest activation."""
    raise GlossError(
        "gloss fires is not available in this build: it needs the subject-model and "
        "feature-source code (pipeline.subjects / pipeline.sources) to run text through"
    )

"""Embedding: is the label closer in meaning to the windows where the feature fires?

No LLM: a sentence embedder (the bundled MiniLM) embeds the label and each held-out
window; the score is the AUC of cosine similarity for active against silent windows
(0.5 is chance). Cheap enough to run on every label; delphi's "embedding" scorer.
"""

from __future__ import annotations

import asyncio

from gloss.pipeline.scorers.base import Outcome, Scorer, Windows, cut, label_text, window_text
from gloss.pipeline.scoring import auc


class Embedding(Scorer):
    method = "embedding"

    def __init__(self, config, endpoint=None, client=None):
        super().__init__(config, None)

    @property
    def model(self) -> str | None:
        from gloss.store.embedder import embedder_name

        return embedder_name(self.config.embedding_model)

    @property
    def embedder(self):
        from gloss.store.embedder import embedder

        return embedder(self.config.embedding_model)

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        assert label is not None
        active, silent = windows.active, windows.silent
        if not active or not silent:
            return Outcome.undefined(
                f"embedding needs active and silent windows, got {len(active)} and {len(silent)}"
            )
        shown = active + silent
        texts = [window_text(cut(e, self.config.max_tokens_per_window)[0]) for e in shown]
        vectors = await asyncio.to_thread(self.embedder.encode, [label_text(label), *texts])
        similarity = (vectors[1:] @ vectors[0]).tolist()
        truth = [e.max_act > 0 for e in shown]
        value, reason = auc(truth, similarity)
        details = {
            "n_active": len(active),
            "n_silent": len(silent),
            "examples": [
                {"window_id": e.window_id, "kind": e.kind, "active": t, "similarity": round(s, 4)}
                for e, t, s in zip(shown, truth, similarity, strict=True)
            ],
        }
        return Outcome(value, details | ({"reason": reason} if reason else {}))

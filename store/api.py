"""The store API: the only way the rest of gloss touches the database.

Open one with `open_store(url)`. `Store` is the one facade; its methods live in rooms,
one module each, all mixins over one engine and its transactions (`store.base`):

    store/registry.py  subjects, feature sources, features; `SOURCE:INDEX` references
    store/mined.py     windows, examples and mined statistics (and layer maps)
    store/pending.py   what is left to explain and to score; failure counts
    store/labels.py    explanations, the replace rule, the review state machine
    store/scores.py    scores of labels and of features; the primary score method
    store/search.py    search with its per-database plans, count, review queue, export,
                       layer peaks; search by meaning over label vectors
    store/vectors.py   sentence embeddings of current labels: the missing, writing them,
                       the vectors in memory (their embedder: store/embedder.py)
    store/runs.py      runs, locks, claims, the LLM ledger

Beside them: `store.types` (the dataclasses methods take and return, never live ORM
objects, so callers cannot hold a session by accident), `store.statuses` (the status
words as enums), `store.models` (the tables), `store.db` (engines and migrations) and
`store.worker` (the threads async code calls the store through). Every write method
commits before it returns: a crash loses only what was in flight. The value types are
re-exported here, so `from store.api import ...` keeps working.
"""

from __future__ import annotations

from gloss.store import db
from gloss.store.labels import Labels
from gloss.store.mined import Mined
from gloss.store.models import CANDIDATE, PROPOSED, REPLACE_ALL, REPLACE_MACHINE, REPLACE_NONE
from gloss.store.pending import Pending
from gloss.store.registry import Registry
from gloss.store.runs import Runs
from gloss.store.scores import Scores
from gloss.store.search import Search
from gloss.store.statuses import CURRENT_STATUSES
from gloss.store.types import (
    EXPORT_FIELDS,
    ExampleIn,
    ExampleOut,
    ExampleSet,
    ExplanationInfo,
    FeatureCard,
    FeatureInfo,
    FeatureRow,
    LayerPeaks,
    LockInfo,
    MinedFeature,
    PromptRef,
    ReviewInfo,
    RunInfo,
    ScoreInfo,
    SourceInfo,
    WindowIn,
    decode_acts,
    encode_acts,
)
from gloss.store.vectors import Encoder, Vectors


def open_store(
    url: str | None = None, *, read_only: bool = False, encoder: Encoder | None = None
) -> Store:
    """Open the database at `url` (default $GLOSS_DATABASE_URL or sqlite:///gloss.db).

    `read_only` is for callers that only read: a missing database is then a one-line
    error naming the URL, never a new empty one. `encoder` embeds labels for search by
    meaning (default: the bundled MiniLM, loaded when first needed).
    """
    store = Store(db.connect(url, read_only=read_only), db.resolve_url(url))
    if encoder is not None:
        store.encoder = encoder
    return store


class Store(Registry, Mined, Pending, Labels, Scores, Search, Vectors, Runs):
    """The feature store: every room's methods on one object over one engine.

    A room never calls another room's methods; the one method that reads across
    rooms, `feature_card`, is here.
    """

    def feature_card(self, feature: int | str) -> FeatureCard:
        """Everything about one feature: statistics, labels with scores, examples, reviews."""
        feature_id = self.resolve_feature(feature)
        info = self.feature(feature_id)
        history = self.explanations(feature_id)
        current = next((e for e in history if e.status in CURRENT_STATUSES), None)
        return FeatureCard(
            feature=info,
            source=self.source(info.source_id),
            current=current,
            history=history,
            examples=self.examples(feature_id),
            reviews=self.reviews(feature_id),
            feature_scores=self.feature_scores(feature_id),
        )


__all__ = [
    "CANDIDATE",
    "PROPOSED",
    "REPLACE_ALL",
    "REPLACE_MACHINE",
    "REPLACE_NONE",
    "EXPORT_FIELDS",
    "ExampleIn",
    "ExampleOut",
    "ExampleSet",
    "ExplanationInfo",
    "FeatureCard",
    "FeatureInfo",
    "FeatureRow",
    "LayerPeaks",
    "LockInfo",
    "MinedFeature",
    "PromptRef",
    "ReviewInfo",
    "RunInfo",
    "ScoreInfo",
    "SourceInfo",
    "Store",
    "WindowIn",
    "decode_acts",
    "encode_acts",
    "open_store",
]

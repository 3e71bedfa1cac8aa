"""The gloss feature store: typed models, migrations glue and the store API.

Querying and reviewing from Python (the same calls the CLI and web app make):

    from gloss.store import open_store
    store = open_store()                       # $GLOSS_DATABASE_URL or sqlite:///gloss.db
    rows = store.search("unit conversion", min_score=0.3, limit=20)   # list[FeatureRow]
    more = store.search("unit conversion", min_score=0.3, after=rows[-1].cursor)  # keyset
    store.count("unit conversion", min_score=0.3)
    card = store.feature_card("gpt2/h.5.mlp/neurons:42")   # or a feature id
    card.current.text, card.current.score, card.history, card.examples, card.reviews
    for row in store.export():                 # streams dicts, see EXPORT_FIELDS
        ...
    store.review(card.feature.id, "edit", "ana", text="dates in footnotes",
                 expected_explanation_id=card.current.id,
                 expected_version=card.current.version)     # ConflictError if stale
    store.next_to_review()                     # the review queue's head

search filters: min_score/max_score, source (name), status (proposed, accepted,
rejected, unlabeled, or feature status new/mined/dead), reviewed (True/False);
order: rank (text relevance, else score), score, -score, id.

Statuses are the enums of `store.statuses` (ExplanationStatus, FeatureStatus, RunStatus,
AuthorKind, ReplacePolicy); each member equals its word, so plain strings work too.
Async code calls the store through `StoreWorker` (one writer thread, a reader pool).
"""

from gloss.store.api import (
    CANDIDATE,
    EXPORT_FIELDS,
    PROPOSED,
    REPLACE_ALL,
    REPLACE_MACHINE,
    REPLACE_NONE,
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
    Store,
    WindowIn,
    decode_acts,
    encode_acts,
    open_store,
)
from gloss.store.errors import (
    ConfigError,
    ConflictError,
    DatabaseError,
    GlossError,
    InputError,
    LLMError,
    LockedError,
    ModelError,
    NotFoundError,
    SchemaAheadError,
    SchemaBehindError,
)
from gloss.store.statuses import (
    AuthorKind,
    ExplanationStatus,
    FeatureStatus,
    ReplacePolicy,
    RunStatus,
)
from gloss.store.worker import StoreWorker

__all__ = [
    "CANDIDATE",
    "PROPOSED",
    "REPLACE_ALL",
    "REPLACE_MACHINE",
    "REPLACE_NONE",
    "EXPORT_FIELDS",
    "AuthorKind",
    "ConfigError",
    "ConflictError",
    "DatabaseError",
    "ExampleIn",
    "ExampleOut",
    "ExampleSet",
    "ExplanationInfo",
    "ExplanationStatus",
    "FeatureCard",
    "FeatureInfo",
    "FeatureRow",
    "FeatureStatus",
    "GlossError",
    "InputError",
    "LLMError",
    "LayerPeaks",
    "LockInfo",
    "LockedError",
    "MinedFeature",
    "ModelError",
    "NotFoundError",
    "PromptRef",
    "ReplacePolicy",
    "ReviewInfo",
    "RunInfo",
    "RunStatus",
    "SchemaAheadError",
    "SchemaBehindError",
    "ScoreInfo",
    "SourceInfo",
    "Store",
    "StoreWorker",
    "WindowIn",
    "decode_acts",
    "encode_acts",
    "open_store",
]

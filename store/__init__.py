"""The gloss feature store: typed models, migrations glue and the store API.

from store import open_store
store = open_store()            # $GLOSS_DATABASE_URL or sqlite:///gloss.db
store.search("unit conversion", min_score=0.3)
"""

from store.api import (
    CANDIDATE,
    EXPORT_FIELDS,
    ExampleIn,
    ExampleOut,
    ExplanationInfo,
    FeatureCard,
    FeatureInfo,
    FeatureRow,
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
from store.errors import (
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

__all__ = [
    "CANDIDATE",
    "EXPORT_FIELDS",
    "ConfigError",
    "ConflictError",
    "DatabaseError",
    "ExampleIn",
    "ExampleOut",
    "ExplanationInfo",
    "FeatureCard",
    "FeatureInfo",
    "FeatureRow",
    "GlossError",
    "InputError",
    "LLMError",
    "LockedError",
    "MinedFeature",
    "ModelError",
    "NotFoundError",
    "PromptRef",
    "ReviewInfo",
    "RunInfo",
    "SchemaAheadError",
    "SchemaBehindError",
    "ScoreInfo",
    "SourceInfo",
    "Store",
    "WindowIn",
    "decode_acts",
    "encode_acts",
    "open_store",
]

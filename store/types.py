"""The store's value types: what goes in and what comes out, as plain dataclasses.

Store methods take and return these (and ids), never live ORM objects, so a caller
cannot hold a session by accident. `*In` types are written by mining; the `*Info`,
`*Out` and `*Row` types are read back. Per-token activations travel as float16 bytes
(`encode_acts` / `decode_acts`), the way `examples.acts` stores them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def encode_acts(values: Sequence[float]) -> bytes:
    """Per-token activations as little-endian float16 bytes (how `examples.acts` stores them)."""
    return struct.pack(f"<{len(values)}e", *values)


def decode_acts(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 2}e", data))


@dataclass(frozen=True)
class PromptRef:
    name: str
    version: str
    hash: str


@dataclass(frozen=True)
class WindowIn:
    doc_id: str
    offset: int
    token_ids: list[int]
    tokens: list[str]


@dataclass(frozen=True)
class ExampleIn:
    window_id: int
    split: str  # "explain" | "validation" | "holdout"
    kind: str  # "top" | "quantile:Q" | "random"
    rank: int
    max_act: float
    acts: bytes  # encode_acts(...) or numpy .astype("<f2").tobytes()


@dataclass
class MinedFeature:
    index: int
    max_act: float
    mean_act: float
    density: float
    n_tokens: int
    histogram: dict[str, Any] | None
    examples: list[ExampleIn] = field(default_factory=list)
    # A dictionary shared by several hook points: {point: mean of top activations there}.
    layers: dict[str, float] | None = None


@dataclass(frozen=True)
class SourceInfo:
    id: int
    name: str
    subject_id: int
    subject_name: str
    subject_path: str
    hook: str
    kind: str
    width: int
    params_hash: str
    path: str | None
    config: dict[str, Any]


@dataclass(frozen=True)
class FeatureInfo:
    id: int
    source_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    mean_act: float | None
    density: float | None
    n_tokens: int | None
    histogram: dict[str, Any] | None
    failures: int
    last_error: str | None
    # {point: mean of top activations there}, shallowest point first; None for one point.
    layers: dict[str, float] | None = None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"


@dataclass(frozen=True)
class ExampleOut:
    window_id: int
    split: str
    kind: str
    rank: int
    max_act: float
    doc_id: str
    offset: int
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]


@dataclass(frozen=True)
class ScoreInfo:
    id: int
    method: str
    value: float | None
    details: dict[str, Any]
    simulator_model: str | None
    prompt_name: str | None
    prompt_version: str | None
    run_id: int | None
    created_at: Any
    calls: int = 0  # LLM calls behind the score (0 without an LLM)
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class ExplanationInfo:
    id: int
    feature_id: int
    text: str
    author_kind: str
    author_name: str
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    prompt_hash: str | None
    parent_id: int | None
    status: str
    run_id: int | None
    score: float | None
    version: int
    details: dict[str, Any]
    created_at: Any
    scores: list[ScoreInfo] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureRow:
    """One line of a feature list or search result: the feature with its current label."""

    feature_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    density: float | None
    explanation_id: int | None
    label: str | None
    label_status: str | None
    author_kind: str | None
    score: float | None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"

    @property
    def cursor(self) -> str:
        """Pass as `Store.search(after=...)` to get the page after this row."""
        return f"{'' if self.score is None else repr(self.score)}:{self.feature_id}"


@dataclass(frozen=True)
class ReviewInfo:
    id: int
    feature_id: int
    explanation_id: int | None
    reviewer: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None
    created_at: Any


@dataclass(frozen=True)
class FeatureCard:
    feature: FeatureInfo
    source: SourceInfo
    current: ExplanationInfo | None
    history: list[ExplanationInfo]
    examples: list[ExampleOut]
    reviews: list[ReviewInfo]
    feature_scores: list[ScoreInfo] = field(default_factory=list)  # of the feature itself


@dataclass(frozen=True)
class LayerPeaks:
    """The features of a shared dictionary whose layer map peaks at one hook point."""

    point: str
    count: int  # all of them; `features` holds the strongest few
    features: list[tuple[FeatureRow, dict[str, float]]]  # with each one's layer map


@dataclass(frozen=True)
class RunInfo:
    id: int
    kind: str
    status: str
    config: dict[str, Any]
    counts: dict[str, Any]
    failures: list[Any]
    tokens_in: int
    tokens_out: int
    cost: float
    code_version: str
    message: str | None
    started_at: Any
    finished_at: Any
    parent_id: int | None = None
    holder: str | None = None
    heartbeat_at: Any = None


@dataclass(frozen=True)
class LockInfo:
    name: str
    holder: str
    run_id: int | None
    acquired_at: Any
    heartbeat_at: Any


# The keys of every dict `Store.export` yields, in order.
EXPORT_FIELDS = (
    "feature_id",
    "source",
    "index",
    "subject",
    "subject_revision",
    "hook",
    "source_kind",
    "feature_status",
    "max_act",
    "mean_act",
    "density",
    "n_tokens",
    "explanation_id",
    "label",
    "label_status",
    "author_kind",
    "author_name",
    "model",
    "prompt_name",
    "prompt_version",
    "prompt_hash",
    "parent_id",
    "run_id",
    "labeled_at",
    "score",  # the label's best score of the primary method (simulation unless changed)
    "scores",  # every method's score of the label: {"simulation": 0.61, "detection": 0.8}
    "feature_scores",  # measures of the feature itself: {"intruder": 0.75}
    "reviewed",
)


def points_in_order(layers: dict[str, float] | None) -> dict[str, float] | None:
    """Shallowest point first: PostgreSQL's JSONB keeps keys in its own order, not ours."""
    if layers is None:
        return None

    def key(point: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", point)]

    return {point: layers[point] for point in sorted(layers, key=key)}

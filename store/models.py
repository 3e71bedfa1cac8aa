"""The feature database, as SQLAlchemy 2.x typed models.

The schema itself is owned by the Alembic revisions in `migrations/`; these
classes describe it for the ORM. Anything a user can see in `sqlite3 gloss.db`
is named here with the same words the CLI and web app use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gloss.store.statuses import (
    CURRENT_SQL,
    AuthorKind,
    ExplanationStatus,
    FeatureStatus,
    ReplacePolicy,
    RunStatus,
)
from gloss.store.statuses import CURRENT_STATUSES as CURRENT_STATUSES  # re-exported

JSONType = JSON().with_variant(JSONB(), "postgresql")

# The status words as the pipeline imports them; the enums in store.statuses define them.
# At most one explanation per feature is current (CURRENT_STATUSES: proposed or accepted).
PROPOSED, ACCEPTED, REJECTED, SUPERSEDED, CANDIDATE = ExplanationStatus
EXPLANATION_STATUSES = tuple(ExplanationStatus)
AUTHOR_KINDS = tuple(AuthorKind)
SOURCE_KINDS = ("neurons", "sae", "dictionary")
SPLITS = ("explain", "validation", "holdout")
REPLACE_NONE, REPLACE_MACHINE, REPLACE_ALL = ReplacePolicy
RUN_STATUSES = tuple(RunStatus)
FEATURE_STATUSES = tuple(FeatureStatus)


def _words(enum: type[StrEnum]) -> Enum:
    """A column holding one of an enum's words: VARCHAR(20) as the migrations made it,
    no CHECK constraint, read back as the enum's members (which equal their words)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class Subject(Base):
    """A model whose features are labeled, identified by name plus revision/file hash."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("name", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    sources: Mapped[list[FeatureSource]] = relationship(back_populates="subject")


class FeatureSource(Base):
    """Where features come from: a hook point of a subject, read directly or through an encoder."""

    __tablename__ = "feature_sources"
    __table_args__ = (UniqueConstraint("subject_id", "hook", "kind", "params_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    hook: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    width: Mapped[int] = mapped_column(Integer)
    params_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="sources")


class Feature(Base):
    """One learned feature with its activation statistics over the mined corpus."""

    __tablename__ = "features"
    __table_args__ = (
        UniqueConstraint("source_id", "index"),
        Index("ix_features_status", "source_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("feature_sources.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[FeatureStatus] = mapped_column(_words(FeatureStatus), default=FeatureStatus.NEW)
    max_act: Mapped[float | None] = mapped_column(Float)
    mean_act: Mapped[float | None] = mapped_column(Float)
    density: Mapped[float | None] = mapped_column(Float)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    # {"edges": [...], "counts": [...]} over nonzero activations.
    histogram: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # A dictionary shared by several hook points: {point: mean of the feature's top
    # activations there}. NULL for a feature of one hook point.
    layers: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    )
    mine_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    # Explain/score failures, so later runs retry only up to a limit.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)

    source: Mapped[FeatureSource] = relationship()


class Window(Base):
    """A run of ctx_len tokens from one corpus document, stored once and shared by features."""

    __tablename__ = "windows"
    __table_args__ = (UniqueConstraint("subject_id", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    doc_id: Mapped[str] = mapped_column(Text)
    offset: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    token_ids: Mapped[list[Any]] = mapped_column()
    tokens: Mapped[list[Any]] = mapped_column()


class FeatureExamples(Base):
    """A feature's examples, packed: windows shown for it with its per-token activations.

    `data` is `ExampleSet.pack()` (store.types): one row per feature, so mining a wide
    SAE writes a row per feature rather than per example. A window is used at most once
    per feature, so explain, validation and holdout never overlap.
    """

    __tablename__ = "feature_examples"

    feature_id: Mapped[int] = mapped_column(
        ForeignKey("features.id", ondelete="CASCADE"), primary_key=True
    )
    count: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Run(Base):
    """One invocation of a stage or of the nightly job, with what it did and spent."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status", "status"),
        Index("ix_runs_plan", "plan_key", "status"),
        Index("ix_runs_parent", "parent_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[RunStatus] = mapped_column(_words(RunStatus), default=RunStatus.RUNNING)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    failures: Mapped[list[Any]] = mapped_column(default=list)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    code_version: Mapped[str] = mapped_column(String(100), default="")
    message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # A stage run inside a nightly run points at it; holder is host:pid of the process,
    # whose heartbeat says it is alive (migration 0005).
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    holder: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Run groups (migration 0010): workers (kind "run") of one plan point at their
    # group's row (kind "group"), which holds the shared budget and what was spent of it;
    # a worker's row holds the worst case of its calls in flight.
    plan_key: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(50))
    max_tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_cost: Mapped[float | None] = mapped_column(Float)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reserved_cost: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class Explanation(Base):
    """A label for a feature, with everything needed to know who or what wrote it and how."""

    __tablename__ = "explanations"
    __table_args__ = (
        Index("ix_explanations_feature", "feature_id", "status"),
        Index("ix_explanations_status_score", "status", "score"),
        Index(
            "uq_explanations_current",
            "feature_id",
            unique=True,
            sqlite_where=text(CURRENT_SQL),
            postgresql_where=text(CURRENT_SQL),
        ),
        # Created by migration 0003 as (score DESC [NULLS LAST], feature_id) and, for
        # the worst-first order, (score ASC [NULLS LAST], feature_id). Migration 0004
        # adds text search's order: ix_explanations_search_rank on SQLite,
        # ix_label_search_rank on PostgreSQL's label_search table.
        Index(
            "ix_explanations_current_score",
            "score",
            "feature_id",
            sqlite_where=text(CURRENT_SQL),
            postgresql_where=text(CURRENT_SQL),
        ),
        Index(
            "ix_explanations_current_score_asc",
            "score",
            "feature_id",
            sqlite_where=text(CURRENT_SQL),
            postgresql_where=text(CURRENT_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    author_kind: Mapped[AuthorKind] = mapped_column(_words(AuthorKind))
    author_name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(300))
    prompt_name: Mapped[str | None] = mapped_column(String(100))
    prompt_version: Mapped[str | None] = mapped_column(String(50))
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("explanations.id", ondelete="SET NULL")
    )
    status: Mapped[ExplanationStatus] = mapped_column(
        _words(ExplanationStatus), default=ExplanationStatus.PROPOSED
    )
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Best score of the primary method (`settings.primary_score_method`), kept by the
    # store so lists sort without a join.
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Bumped on every status change: reviewers send the version they saw.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    scores: Mapped[list[Score]] = relationship(back_populates="explanation")


class Score(Base):
    """How well an explanation predicts its feature. `value` is NULL when undefined (reason in details)."""

    __tablename__ = "scores"
    __table_args__ = (
        Index("ix_scores_method_value", "method", "value"),
        # At most one score per label, method, simulator and prompt (migration 0005).
        Index(
            "uq_scores_once",
            "explanation_id",
            "method",
            func.coalesce(text("simulator_model"), ""),
            func.coalesce(text("prompt_name"), ""),
            func.coalesce(text("prompt_version"), ""),
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    explanation_id: Mapped[int] = mapped_column(
        ForeignKey("explanations.id", ondelete="CASCADE"), index=True
    )
    method: Mapped[str] = mapped_column(String(30))
    value: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    simulator_model: Mapped[str | None] = mapped_column(String(300))
    prompt_name: Mapped[str | None] = mapped_column(String(100))
    prompt_version: Mapped[str | None] = mapped_column(String(50))
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    explanation: Mapped[Explanation] = relationship(back_populates="scores")


class FeatureScore(Base):
    """A measure of the feature itself, not of a label (intruder detection), migration 0007."""

    __tablename__ = "feature_scores"
    __table_args__ = (
        Index(
            "uq_feature_scores_once",
            "feature_id",
            "method",
            func.coalesce(text("model"), ""),
            func.coalesce(text("prompt_name"), ""),
            func.coalesce(text("prompt_version"), ""),
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(30))
    value: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model: Mapped[str | None] = mapped_column(String(300))
    prompt_name: Mapped[str | None] = mapped_column(String(100))
    prompt_version: Mapped[str | None] = mapped_column(String(50))
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LabelVector(Base):
    """A current label's sentence embedding, for search by meaning (migration 0011).

    `vector` is float32, little-endian, unit length. A trigger drops the row when its
    label stops being current or changes text; ids only grow, so max(id) tells a reader
    holding vectors in memory whether any were added.
    """

    __tablename__ = "label_vectors"
    __table_args__ = (
        UniqueConstraint("explanation_id", name="uq_label_vectors_explanation"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class LabelVectorTodo(Base):
    """A current label still without a vector; triggers keep this list (migration 0011)."""

    __tablename__ = "label_vectors_todo"

    explanation_id: Mapped[int] = mapped_column(
        ForeignKey("explanations.id", ondelete="CASCADE"), primary_key=True
    )


class Setting(Base):
    """The database's own settings (`primary_score_method`), migration 0007."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONType)


class Review(Base):
    """The audit trail: every human action on a feature's labels."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(
        ForeignKey("features.id", ondelete="CASCADE"), index=True
    )
    explanation_id: Mapped[int | None] = mapped_column(
        ForeignKey("explanations.id", ondelete="SET NULL")
    )
    reviewer: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LLMCall(Base):
    """Every LLM request: the response cache (by request hash) and the cost ledger."""

    __tablename__ = "llm_calls"
    __table_args__ = (Index("ix_llm_calls_hash", "request_hash", "outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(300))
    endpoint: Mapped[str] = mapped_column(String(500), default="")
    cacheable: Mapped[bool] = mapped_column(Boolean, default=True)
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Lock(Base):
    """Named locks held in the database (one nightly run at a time)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[int | None] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Claim(Base):
    """A feature one process is explaining or scoring, until its lease expires.

    Two processes never pay for the same LLM work: a stage claims a feature before
    calling the LLM and skips features claimed by a live holder.
    """

    __tablename__ = "claims"

    feature_id: Mapped[int] = mapped_column(
        ForeignKey("features.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(20), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class MiningUnit(Base):
    """A block of a source's features one process is mining, until its lease expires.

    Processes mining the same source split it into units of `feature_chunk` features
    (`first` .. `first + size - 1`); a unit overlapping one held by a live holder is
    left to it. One that dies loses only its unit, which another takes when the lease
    has expired.
    """

    __tablename__ = "mining_units"

    source_id: Mapped[int] = mapped_column(
        ForeignKey("feature_sources.id", ondelete="CASCADE"), primary_key=True
    )
    first: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime] = mapped_column(DateTime)

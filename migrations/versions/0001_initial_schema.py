"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "locks",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "counts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "failures",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("code_version", sa.String(length=100), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "subjects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(length=200), nullable=False),
        sa.Column("architecture", sa.String(length=100), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "revision"),
    )
    op.create_table(
        "feature_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("hook", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("subject_id", "hook", "kind", "params_hash"),
    )
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("cacheable", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "request",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "response",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.create_index("ix_llm_calls_hash", ["request_hash", "outcome"], unique=False)

    op.create_table(
        "windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("doc_id", sa.Text(), nullable=False),
        sa.Column("offset", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "token_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "tokens",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject_id", "content_hash"),
    )
    op.create_table(
        "features",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("max_act", sa.Float(), nullable=True),
        sa.Column("mean_act", sa.Float(), nullable=True),
        sa.Column("density", sa.Float(), nullable=True),
        sa.Column("n_tokens", sa.Integer(), nullable=True),
        sa.Column(
            "histogram",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("mine_run_id", sa.Integer(), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["mine_run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["source_id"], ["feature_sources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id", "index"),
    )
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.create_index("ix_features_status", ["source_id", "status"], unique=False)

    op.create_table(
        "examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("window_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("max_act", sa.Float(), nullable=False),
        sa.Column("acts", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["window_id"], ["windows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("feature_id", "window_id"),
    )
    with op.batch_alter_table("examples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_examples_window_id"), ["window_id"], unique=False)

    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author_kind", sa.String(length=20), nullable=False),
        sa.Column("author_name", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=True),
        sa.Column("prompt_name", sa.String(length=100), nullable=True),
        sa.Column("prompt_version", sa.String(length=50), nullable=True),
        sa.Column("prompt_hash", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["explanations.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("explanations", schema=None) as batch_op:
        batch_op.create_index("ix_explanations_feature", ["feature_id", "status"], unique=False)
        batch_op.create_index("ix_explanations_status_score", ["status", "score"], unique=False)
        batch_op.create_index(
            "uq_explanations_current",
            ["feature_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('proposed', 'accepted')"),
            postgresql_where=sa.text("status IN ('proposed', 'accepted')"),
        )

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("explanation_id", sa.Integer(), nullable=True),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column(
            "before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "after",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["explanation_id"], ["explanations.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_feature_id"), ["feature_id"], unique=False)

    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("explanation_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=30), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("simulator_model", sa.String(length=300), nullable=True),
        sa.Column("prompt_name", sa.String(length=100), nullable=True),
        sa.Column("prompt_version", sa.String(length=50), nullable=True),
        sa.Column("prompt_hash", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["explanation_id"], ["explanations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_scores_explanation_id"), ["explanation_id"], unique=False
        )
        batch_op.create_index("ix_scores_method_value", ["method", "value"], unique=False)

    _create_search_and_view()


def downgrade() -> None:
    _drop_search_and_view()
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_method_value")
        batch_op.drop_index(batch_op.f("ix_scores_explanation_id"))

    op.drop_table("scores")
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviews_feature_id"))

    op.drop_table("reviews")
    with op.batch_alter_table("explanations", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_explanations_current",
            sqlite_where=sa.text("status IN ('proposed', 'accepted')"),
            postgresql_where=sa.text("status IN ('proposed', 'accepted')"),
        )
        batch_op.drop_index("ix_explanations_status_score")
        batch_op.drop_index("ix_explanations_feature")

    op.drop_table("explanations")
    with op.batch_alter_table("examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_examples_window_id"))

    op.drop_table("examples")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_index("ix_features_status")

    op.drop_table("features")
    op.drop_table("windows")
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_hash")

    op.drop_table("llm_calls")
    op.drop_table("feature_sources")
    op.drop_table("subjects")
    op.drop_table("runs")
    op.drop_table("locks")


# The current-label view and full-text search are plain SQL so that any SQL tool sees them.
FEATURE_LABELS_VIEW = """
CREATE VIEW feature_labels AS
SELECT f.id AS feature_id,
       s.name AS source,
       f."index" AS feature_index,
       f.status AS feature_status,
       f.max_act, f.mean_act, f.density,
       e.id AS explanation_id,
       e.text AS label,
       e.status AS label_status,
       e.author_kind, e.author_name, e.model,
       e.prompt_name, e.prompt_version,
       e.score,
       e.created_at AS labeled_at
FROM features f
JOIN feature_sources s ON s.id = f.source_id
LEFT JOIN explanations e ON e.feature_id = f.id AND e.status IN ('proposed', 'accepted')
"""

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE explanations_fts USING fts5("
    "text, content='explanations', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER explanations_fts_ai AFTER INSERT ON explanations BEGIN "
    "INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER explanations_fts_ad AFTER DELETE ON explanations BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER explanations_fts_au AFTER UPDATE OF text ON explanations BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text); END",
]


def _create_search_and_view() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        op.execute(
            "CREATE INDEX ix_explanations_text_tsv ON explanations "
            "USING gin (to_tsvector('english', text))"
        )
    op.execute(FEATURE_LABELS_VIEW)


def _drop_search_and_view() -> None:
    op.execute("DROP VIEW IF EXISTS feature_labels")
    if op.get_bind().dialect.name == "sqlite":
        for name in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS explanations_fts_{name}")
        op.execute("DROP TABLE IF EXISTS explanations_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_explanations_text_tsv")

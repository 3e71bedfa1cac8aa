"""Scorers: what each score cost, scores of a feature itself, and which method ranks

- `scores.calls`, `scores.tokens_in`, `scores.tokens_out`: the LLM calls and tokens
  behind a score (0 for scores without an LLM, and for scores stored before).
- `feature_scores`: a measure of a feature itself, not of a label (intruder detection:
  can an LLM tell the feature's activating windows from one that is not?), one per
  feature, method, model and prompt version.
- `settings`: the database's own settings; `primary_score_method` names the score method
  behind `explanations.score`, which search, sorting and the review queue use.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return JSONB() if op.get_bind().dialect.name == "postgresql" else sa.JSON()


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for column in ("calls", "tokens_in", "tokens_out"):
            batch.add_column(sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "feature_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=30), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("details", _json(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=True),
        sa.Column("prompt_name", sa.String(length=100), nullable=True),
        sa.Column("prompt_version", sa.String(length=50), nullable=True),
        sa.Column("prompt_hash", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tokens_in", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tokens_out", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_feature_scores_once ON feature_scores (feature_id, method, "
        "COALESCE(model, ''), COALESCE(prompt_name, ''), COALESCE(prompt_version, ''))"
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=100), primary_key=True),
        sa.Column("value", _json(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_index("uq_feature_scores_once", table_name="feature_scores")
    op.drop_table("feature_scores")
    with op.batch_alter_table("scores") as batch:
        for column in ("tokens_out", "tokens_in", "calls"):
            batch.drop_column(column)

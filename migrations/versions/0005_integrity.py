"""Integrity: one score per label, method, simulator and prompt; runs know their process; claims

- `scores` gets a unique index on (explanation, method, simulator model, prompt name,
  prompt version): a standalone `gloss score` beside a running `gloss run` wrote
  duplicate scores. NULLs count as equal (COALESCE), on both databases. Duplicates
  already stored are removed, keeping the newest, and each label's best score is
  recomputed from what remains.
- `runs` gets `parent_id` (a stage run inside a nightly run), `holder` (host:pid of
  the process) and `heartbeat_at`, so a run whose process died is found and marked
  abandoned, children included, instead of staying `running` forever.
- `claims`: a feature being explained or scored is claimed by one process for a
  lease, so two processes never pay for the same LLM work.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCORE_KEY = (
    "explanation_id, method, COALESCE(simulator_model, ''), "
    "COALESCE(prompt_name, ''), COALESCE(prompt_version, '')"
)


def upgrade() -> None:
    op.execute(
        f"DELETE FROM scores WHERE id NOT IN (SELECT max(id) FROM scores GROUP BY {SCORE_KEY})"
    )
    op.execute(
        "UPDATE explanations SET score = (SELECT max(value) FROM scores "
        "WHERE scores.explanation_id = explanations.id AND scores.method = 'simulation') "
        "WHERE score IS NOT NULL"
    )
    op.execute(f"CREATE UNIQUE INDEX uq_scores_once ON scores ({SCORE_KEY})")

    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with an inline reference; a separate constraint it cannot.
        op.execute(
            "ALTER TABLE runs ADD COLUMN parent_id INTEGER REFERENCES runs (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("runs", sa.Column("parent_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_runs_parent_id", "runs", "runs", ["parent_id"], ["id"], ondelete="SET NULL"
        )
    op.add_column("runs", sa.Column("holder", sa.String(length=200), nullable=True))
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
    op.create_index("ix_runs_status", "runs", ["status"])

    op.create_table(
        "claims",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("feature_id", "stage"),
    )
    op.create_index("ix_claims_holder", "claims", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_claims_holder", table_name="claims")
    op.drop_table("claims")
    op.drop_index("ix_runs_status", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("fk_runs_parent_id", type_="foreignkey")
        batch.drop_column("heartbeat_at")
        batch.drop_column("holder")
        batch.drop_column("parent_id")
    op.execute("DROP INDEX IF EXISTS uq_scores_once")

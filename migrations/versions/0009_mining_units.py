"""Mining units: processes mining one source split it, each leasing blocks of features

- `mining_units` (source_id, first, size, holder, run_id, expires_at): features
  `first` .. `first + size - 1` of a source being mined by `holder` until `expires_at`
  (kept fresh by its heartbeat). A unit overlapping a live one is left to its holder.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mining_units",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("first", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["source_id"], ["feature_sources.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("source_id", "first"),
    )
    with op.batch_alter_table("mining_units", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mining_units_holder"), ["holder"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mining_units", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mining_units_holder"))
    op.drop_table("mining_units")

"""Run groups: many `gloss run` workers on one plan share its budget

- `runs.plan_key`: on a group's row (kind `group`), the hash of the plan its workers
  share (what they do, with which models, within which budget).
- `runs.device`: the torch device a worker mines on.
- `runs.max_tokens`, `runs.max_cost`: the group's budget; its `tokens_in`, `tokens_out`
  and `cost` are what its workers' calls spent, booked as each call ends.
- `runs.reserved_tokens`, `runs.reserved_cost`: on a worker's row, the worst case of
  its calls in flight, booked before each call starts.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("device", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("max_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("max_cost", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("reserved_tokens", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("reserved_cost", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_runs_plan", ["plan_key", "status"], unique=False)
        batch_op.create_index("ix_runs_parent", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_parent")
        batch_op.drop_index("ix_runs_plan")
        for column in (
            "reserved_cost", "reserved_tokens", "max_cost", "max_tokens", "device", "plan_key"
        ):  # fmt: skip
            batch_op.drop_column(column)

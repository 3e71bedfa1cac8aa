"""Feature layer maps: a dictionary shared by several hook points says where each feature lives

- `features.layers` (JSON, NULL for features of a single hook point): for each hook point
  a shared dictionary reads, the mean of the feature's top activations there (its
  importance per layer, Yun et al. 2021), e.g. `{"layer.0.resid": 0.12, ...}`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE features ADD COLUMN layers JSON")
    else:
        op.add_column("features", sa.Column("layers", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("features", "layers")

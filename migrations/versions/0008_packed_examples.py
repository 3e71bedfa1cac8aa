"""Packed examples: one row per feature instead of one per example

- `feature_examples` (feature_id, count, data): a feature's examples as one
  `ExampleSet.pack()` (store.types): a record per example (window, split, kind, rank,
  max activation) and the per-token activations, dense float16 or, where smaller,
  the nonzero ones with their positions. Mining a 16k-latent SAE wrote about a million
  `examples` rows; it now writes 16k rows, and a mostly silent latent packs small.
- `examples` is dropped after its rows are packed; a downgrade unpacks them again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from itertools import groupby

import sqlalchemy as sa
from alembic import op

from gloss.store.types import ExampleIn, ExampleSet, encode_acts

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 2000  # features converted per statement


def upgrade() -> None:
    op.create_table(
        "feature_examples",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("feature_id"),
    )
    bind = op.get_bind()
    features = bind.execute(sa.text("SELECT DISTINCT feature_id FROM examples ORDER BY 1"))
    features = [f for (f,) in features]
    select = sa.text(
        "SELECT feature_id, window_id, split, kind, rank, max_act, acts FROM examples "
        "WHERE feature_id IN :ids ORDER BY feature_id, id"
    ).bindparams(sa.bindparam("ids", expanding=True))
    insert = sa.text("INSERT INTO feature_examples (feature_id, count, data) VALUES (:f, :n, :d)")
    for start in range(0, len(features), BATCH):
        rows = bind.execute(select, {"ids": features[start : start + BATCH]}).all()
        packed = []
        for feature_id, group in groupby(rows, key=lambda r: r[0]):
            examples = ExampleSet.of([ExampleIn(*r[1:6], bytes(r[6])) for r in group])
            packed.append({"f": feature_id, "n": len(examples), "d": examples.pack()})
        bind.execute(insert, packed)
    with op.batch_alter_table("examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_examples_window_id"))
    op.drop_table("examples")


def downgrade() -> None:
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
    bind = op.get_bind()
    insert = sa.text(
        "INSERT INTO examples (feature_id, window_id, split, kind, rank, max_act, acts) "
        "VALUES (:f, :w, :s, :k, :r, :m, :a)"
    )
    rows = []
    for feature_id, data in bind.execute(
        sa.text("SELECT feature_id, data FROM feature_examples ORDER BY feature_id")
    ):
        for w, s, k, r, m, acts in ExampleSet.unpack(bytes(data)).rows():
            rows.append({"f": feature_id, "w": w, "s": s, "k": k, "r": r, "m": m,
                         "a": encode_acts(acts)})  # fmt: skip
        if len(rows) >= 50 * BATCH:
            bind.execute(insert, rows)
            rows = []
    if rows:
        bind.execute(insert, rows)
    op.drop_table("feature_examples")

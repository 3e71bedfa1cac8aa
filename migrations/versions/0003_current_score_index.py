"""Indexes of current labels by score, for the feature list's score orders

Listing features best-scored (or worst-scored) first sorted every feature with its
label (50 ms for the first page at 100,000 features); walking an index reads only
the page. One index per direction: the tie-break on feature id stays ascending.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    nulls = " NULLS LAST" if op.get_bind().dialect.name == "postgresql" else ""
    for name, direction in (("", "DESC"), ("_asc", "ASC")):
        op.execute(
            f"CREATE INDEX ix_explanations_current_score{name} ON explanations "
            f"(score {direction}{nulls}, feature_id) WHERE status IN ('proposed', 'accepted')"
        )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_explanations_current_score")
    op.execute("DROP INDEX IF EXISTS ix_explanations_current_score_asc")

"""Search by meaning: a sentence embedding of every current label

- `label_vectors`: one float32 vector per current label (little-endian bytes), with the
  name of the model that embedded it. The ids only grow (AUTOINCREMENT on SQLite), so
  (count, max id) changes whenever a vector is added or dropped: a long-lived reader
  knows from two numbers whether its copy in memory is stale.
- A trigger drops a label's vector when the label stops being current or its text
  changes, so the table never holds a vector that search must not find; labels that
  become current get theirs from the pipeline (`gloss embed`, each `gloss run`, the
  review app), which holds the embedding model the database does not.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CURRENT = "('proposed', 'accepted')"

SQLITE_TRIGGER = (
    "CREATE TRIGGER label_vectors_stale AFTER UPDATE OF text, status ON explanations "
    f"WHEN new.status NOT IN {CURRENT} OR new.text IS NOT old.text BEGIN "
    "DELETE FROM label_vectors WHERE explanation_id = new.id; END"
)

POSTGRES_TRIGGER = [
    f"""CREATE FUNCTION gloss_label_vectors_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN {CURRENT} OR NEW.text IS DISTINCT FROM OLD.text THEN
        DELETE FROM label_vectors WHERE explanation_id = NEW.id;
    END IF;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER label_vectors_stale AFTER UPDATE OF text, status ON explanations "
    "FOR EACH ROW EXECUTE FUNCTION gloss_label_vectors_stale()",
]


def upgrade() -> None:
    op.create_table(
        "label_vectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("explanation_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["explanation_id"], ["explanations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("explanation_id", name="uq_label_vectors_explanation"),
        sqlite_autoincrement=True,
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_TRIGGER)
    else:
        for statement in POSTGRES_TRIGGER:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS label_vectors_stale")
    else:
        op.execute("DROP TRIGGER IF EXISTS label_vectors_stale ON explanations")
        op.execute("DROP FUNCTION IF EXISTS gloss_label_vectors_stale()")
    op.drop_table("label_vectors")

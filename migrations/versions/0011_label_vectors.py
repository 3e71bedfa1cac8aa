"""Search by meaning: a sentence embedding of every current label

- `label_vectors`: one float32 vector per current label (little-endian bytes), with the
  name of the model that embedded it. Ids only grow (AUTOINCREMENT on SQLite), so a
  long-lived reader holding the vectors in memory learns what was added from max(id).
- `label_vectors_todo`: the current labels still without a vector. The database keeps
  it: triggers add a label when it becomes current (or its text changes) and take it
  out when it stops being current, and drop a vector whose label stopped being current
  or changed text. Whoever embeds (`gloss run`, `gloss embed`, imports, a search) takes
  labels from it, so finding the work never scans every label.

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

SQLITE_TRIGGERS = [
    "CREATE TRIGGER label_vectors_new AFTER INSERT ON explanations "
    f"WHEN new.status IN {CURRENT} BEGIN "
    "INSERT OR IGNORE INTO label_vectors_todo (explanation_id) VALUES (new.id); END",
    "CREATE TRIGGER label_vectors_stale AFTER UPDATE OF text, status ON explanations "
    f"WHEN new.status NOT IN {CURRENT} OR new.text IS NOT old.text BEGIN "
    "DELETE FROM label_vectors WHERE explanation_id = new.id; "
    "DELETE FROM label_vectors_todo WHERE explanation_id = new.id "
    f"AND new.status NOT IN {CURRENT}; END",
    "CREATE TRIGGER label_vectors_due AFTER UPDATE OF text, status ON explanations "
    f"WHEN new.status IN {CURRENT} AND (old.status NOT IN {CURRENT} "
    "OR new.text IS NOT old.text) BEGIN "
    "INSERT OR IGNORE INTO label_vectors_todo (explanation_id) VALUES (new.id); END",
]

POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION gloss_label_vectors() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.status NOT IN {CURRENT}
                             OR NEW.text IS DISTINCT FROM OLD.text) THEN
        DELETE FROM label_vectors WHERE explanation_id = NEW.id;
    END IF;
    IF NEW.status NOT IN {CURRENT} THEN
        DELETE FROM label_vectors_todo WHERE explanation_id = NEW.id;
    ELSIF TG_OP = 'INSERT' OR OLD.status NOT IN {CURRENT}
          OR NEW.text IS DISTINCT FROM OLD.text THEN
        INSERT INTO label_vectors_todo (explanation_id) VALUES (NEW.id)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER label_vectors AFTER INSERT OR UPDATE OF text, status ON explanations "
    "FOR EACH ROW EXECUTE FUNCTION gloss_label_vectors()",
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
    op.create_table(
        "label_vectors_todo",
        sa.Column("explanation_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["explanation_id"], ["explanations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("explanation_id"),
    )
    for statement in (
        SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else POSTGRES_TRIGGERS
    ):
        op.execute(statement)
    op.execute(
        "INSERT INTO label_vectors_todo (explanation_id) "
        f"SELECT id FROM explanations WHERE status IN {CURRENT}"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("new", "stale", "due"):
            op.execute(f"DROP TRIGGER IF EXISTS label_vectors_{name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS label_vectors ON explanations")
        op.execute("DROP FUNCTION IF EXISTS gloss_label_vectors()")
    op.drop_table("label_vectors_todo")
    op.drop_table("label_vectors")

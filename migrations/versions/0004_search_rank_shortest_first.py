"""Text search ranks shortest label first, then best score, from an index

Relevance was bm25 (SQLite) and ts_rank (PostgreSQL): both score every match, so a
word found in a third of 100,000 labels cost 25 to 45 ms per query, and the two
databases ordered results differently. Among labels that contain every query word,
the shortest is the one most about them (what bm25 mostly measures on labels), and
ties go to the best-scored. That order is static, so an index serves it: a query for
a common word walks the index and stops after a page.

SQLite: a partial index on current labels by (length(text), score DESC). PostgreSQL:
`label_search` carries each label's length and score under an index in that order;
its trigger now also follows score updates.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CURRENT = "('proposed', 'accepted')"


def _label_search_function(body: str) -> str:
    return (
        "CREATE OR REPLACE FUNCTION gloss_label_search() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$\nBEGIN\n{body}    RETURN NULL;\nEND $$"
    )


def _label_search_trigger(columns: str) -> list[str]:
    return [
        "DROP TRIGGER IF EXISTS explanations_label_search ON explanations",
        f"CREATE TRIGGER explanations_label_search AFTER INSERT OR UPDATE OF {columns} "
        "ON explanations FOR EACH ROW EXECUTE FUNCTION gloss_label_search()",
    ]


POSTGRES_UPGRADE = [
    "ALTER TABLE label_search ADD COLUMN length integer, ADD COLUMN score double precision",
    "UPDATE label_search SET length = length(e.text), score = e.score "
    "FROM explanations AS e WHERE e.id = label_search.explanation_id",
    "ALTER TABLE label_search ALTER COLUMN length SET NOT NULL",
    "CREATE INDEX ix_label_search_rank ON label_search "
    "(length, score DESC NULLS LAST, explanation_id)",
    _label_search_function(
        # A new score leaves the tsvector alone: only the rank index moves.
        "    IF TG_OP = 'UPDATE' AND NEW.text = OLD.text AND NEW.status = OLD.status THEN\n"
        "        UPDATE label_search SET score = NEW.score WHERE explanation_id = NEW.id;\n"
        "        RETURN NULL;\n"
        "    END IF;\n"
        "    DELETE FROM label_search WHERE explanation_id = NEW.id;\n"
        f"    IF NEW.status IN {CURRENT} THEN\n"
        "        INSERT INTO label_search (explanation_id, search_vector, length, score)\n"
        "        VALUES (NEW.id, to_tsvector('english', NEW.text), length(NEW.text), NEW.score);\n"
        "    END IF;\n"
    ),
    *_label_search_trigger("text, status, score"),
]

POSTGRES_DOWNGRADE = [
    _label_search_function(  # as in 0002
        "    DELETE FROM label_search WHERE explanation_id = NEW.id;\n"
        f"    IF NEW.status IN {CURRENT} THEN\n"
        "        INSERT INTO label_search VALUES (NEW.id, to_tsvector('english', NEW.text));\n"
        "    END IF;\n"
    ),
    *_label_search_trigger("text, status"),
    "DROP INDEX IF EXISTS ix_label_search_rank",
    "ALTER TABLE label_search DROP COLUMN length, DROP COLUMN score",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE INDEX ix_explanations_search_rank ON explanations "
            f"(length(text), score DESC) WHERE status IN {CURRENT}"
        )
        return
    for statement in POSTGRES_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX IF EXISTS ix_explanations_search_rank")
        return
    for statement in POSTGRES_DOWNGRADE:
        op.execute(statement)

"""Full-text search indexes current labels only, and PostgreSQL stores their tsvectors

Search only ever returns current labels (proposed or accepted), yet 0001 indexed every
label ever written: best-of-n candidates, superseded and rejected labels all made
common words slower to rank. On PostgreSQL ranking also recomputed to_tsvector for
every match (650 ms p95 over 100,000 labels).

SQLite: the FTS5 table keeps its name and tokenizer; its triggers now index a label
while it is current. PostgreSQL: the narrow `label_search` table holds each current
label's tsvector under a GIN index, kept by a trigger; deleting a label cascades.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CURRENT = "('proposed', 'accepted')"

SQLITE_UPGRADE = [
    *(f"DROP TRIGGER IF EXISTS explanations_fts_{name}" for name in ("ai", "ad", "au")),
    "INSERT INTO explanations_fts(explanations_fts) VALUES ('delete-all')",
    "CREATE TRIGGER explanations_fts_ai AFTER INSERT ON explanations "
    f"WHEN new.status IN {CURRENT} BEGIN "
    "INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER explanations_fts_ad AFTER DELETE ON explanations "
    f"WHEN old.status IN {CURRENT} BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER explanations_fts_au AFTER UPDATE OF text, status ON explanations BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) "
    f"SELECT 'delete', old.id, old.text WHERE old.status IN {CURRENT}; "
    "INSERT INTO explanations_fts(rowid, text) "
    f"SELECT new.id, new.text WHERE new.status IN {CURRENT}; END",
    "INSERT INTO explanations_fts(rowid, text) "
    f"SELECT id, text FROM explanations WHERE status IN {CURRENT}",
]

SQLITE_DOWNGRADE = [
    *(f"DROP TRIGGER IF EXISTS explanations_fts_{name}" for name in ("ai", "ad", "au")),
    "CREATE TRIGGER explanations_fts_ai AFTER INSERT ON explanations BEGIN "
    "INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER explanations_fts_ad AFTER DELETE ON explanations BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER explanations_fts_au AFTER UPDATE OF text ON explanations BEGIN "
    "INSERT INTO explanations_fts(explanations_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); "
    "INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO explanations_fts(explanations_fts) VALUES ('rebuild')",
]

POSTGRES_UPGRADE = [
    "DROP INDEX IF EXISTS ix_explanations_text_tsv",
    "CREATE TABLE label_search ("
    " explanation_id integer PRIMARY KEY REFERENCES explanations (id) ON DELETE CASCADE,"
    " search_vector tsvector NOT NULL)",
    # Without fastupdate, new labels go straight into the index: a pending list would be
    # scanned by every search until vacuum (2 ms per query after 25,000 new labels).
    "CREATE INDEX ix_label_search_vector ON label_search USING gin (search_vector) "
    "WITH (fastupdate = off)",
    f"""CREATE FUNCTION gloss_label_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM label_search WHERE explanation_id = NEW.id;
    IF NEW.status IN {CURRENT} THEN
        INSERT INTO label_search VALUES (NEW.id, to_tsvector('english', NEW.text));
    END IF;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER explanations_label_search AFTER INSERT OR UPDATE OF text, status "
    "ON explanations FOR EACH ROW EXECUTE FUNCTION gloss_label_search()",
    "INSERT INTO label_search SELECT id, to_tsvector('english', text) FROM explanations "
    f"WHERE status IN {CURRENT}",
]

POSTGRES_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS explanations_label_search ON explanations",
    "DROP FUNCTION IF EXISTS gloss_label_search()",
    "DROP TABLE IF EXISTS label_search",
    "CREATE INDEX ix_explanations_text_tsv ON explanations "
    "USING gin (to_tsvector('english', text))",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_UPGRADE if sqlite else POSTGRES_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_DOWNGRADE if sqlite else POSTGRES_DOWNGRADE:
        op.execute(statement)

"""Migrations and the one-line errors around opening a database."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from gloss.pipeline.cli import main
from gloss.store import (
    DatabaseError,
    MinedFeature,
    PromptRef,
    SchemaAheadError,
    SchemaBehindError,
    db,
    open_store,
)

ROOT = Path(__file__).resolve().parent.parent

EXTRA_REVISION = '''
"""a newer revision, for tests"""
from alembic import op
import sqlalchemy as sa

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("extra", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("extra")
'''


@pytest.fixture
def newer_migrations(tmp_path):
    """A copy of migrations/ with one more revision: code that is ahead of the database."""
    folder = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / "9999_extra.py").write_text(
        EXTRA_REVISION.format(head=db.head_revision())
    )
    return folder


def tables(url):
    engine = create_engine(url)
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    engine.dispose()
    return names


@pytest.mark.empty_database
def test_upgrade_from_empty_to_head_and_back(db_url):
    assert db.current_revision(db_url) is None
    before, after = db.upgrade(db_url)
    assert (before, after) == (None, db.head_revision())
    assert {"features", "explanations", "scores", "reviews", "runs", "llm_calls"} <= tables(db_url)
    db.downgrade(db_url, "base")
    assert tables(db_url) <= {"alembic_version"}
    assert db.current_revision(db_url) is None
    db.upgrade(db_url)
    assert db.current_revision(db_url) == db.head_revision()


@pytest.mark.empty_database
def test_labels_survive_a_downgrade_and_upgrade_of_each_revision(db_url):
    """Revisions apply to databases holding labels: 0002 reindexes them on PostgreSQL, and
    0004 copies their lengths and scores into the order search reads."""
    with open_store(db_url) as store:
        subject = store.get_or_create_subject("s", "/s", "r", "bert")
        source = store.get_or_create_source(subject, "layer.0.mlp", "neurons", 3, "p")
        store.write_mined_features(
            source, [MinedFeature(i, 1.0, 0.1, 0.1, 1, None, []) for i in (0, 1, 2)]
        )
        prompt = PromptRef("explain", "1", "h")
        for feature, label, score in zip(
            store.features(source),
            ["old apples", "red apples", "apples"],
            [0.2, 0.9, None],
            strict=True,
        ):
            explanation = store.add_explanation(
                feature.id, label, author_kind="model", author_name="m", prompt=prompt
            )
            if score is not None:
                store.add_score(explanation, "simulation", score, simulator_model="sim")
        store.review(feature.id, "reject", "ann")
    script = ScriptDirectory.from_config(db._alembic_config())
    for revision in [r.revision for r in script.walk_revisions()][1:]:  # all but head
        db.downgrade(db_url, revision)
        db.upgrade(db_url)
        with open_store(db_url) as store:
            found = [r.label for r in store.search("apples")]
            assert found == ["red apples", "old apples"], revision


@pytest.mark.empty_database
def test_cli_db_upgrade_and_current_report_the_single_head(db_url, capsys):
    assert main(["--database", db_url, "db", "upgrade"]) == 0
    assert main(["--database", db_url, "db", "current"]) == 0
    out = capsys.readouterr().out
    assert f"{db.head_revision()} (head)" in out
    assert main(["--database", db_url, "db", "current", "--json"]) == 0
    assert f'"current": "{db.head_revision()}"' in capsys.readouterr().out


@pytest.mark.empty_database
def test_first_use_creates_the_schema(db_url):
    open_store(db_url).close()
    assert db.current_revision(db_url) == db.head_revision()


def test_default_database_is_gloss_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLOSS_DATABASE_URL", raising=False)
    open_store().close()
    assert (tmp_path / "gloss.db").exists()
    monkeypatch.setenv("GLOSS_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    open_store().close()
    assert (tmp_path / "other.db").exists()


@pytest.mark.empty_database
def test_database_behind_head_says_run_upgrade(db_url, newer_migrations, monkeypatch, capsys):
    open_store(db_url).close()  # at the real head
    monkeypatch.setattr(db, "MIGRATIONS", newer_migrations)  # the code is now one revision ahead
    with pytest.raises(SchemaBehindError, match="run gloss db upgrade"):
        open_store(db_url)
    assert main(["--database", db_url, "db", "upgrade"]) == 0
    assert db.current_revision(db_url) == "9999"
    open_store(db_url).close()


@pytest.mark.empty_database
def test_database_ahead_of_the_code(db_url, newer_migrations, monkeypatch):
    monkeypatch.setattr(db, "MIGRATIONS", newer_migrations)
    open_store(db_url).close()  # written by the "newer gloss"
    monkeypatch.undo()
    with pytest.raises(SchemaAheadError, match="newer gloss"):
        open_store(db_url)
    with pytest.raises(SchemaAheadError):
        db.upgrade(db_url)


def test_corrupt_sqlite_file(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(DatabaseError, match="not a usable SQLite database"):
        open_store(f"sqlite:///{path}")


def test_sqlite_folder_missing(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/nope/gloss.db")


def test_foreign_tables_are_not_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE mine (id INTEGER)"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="no gloss schema revision"):
        open_store(url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "malformed database URL"),
        ("mysql://nobody@127.0.0.1/x", "gloss speaks sqlite"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/gloss", "cannot reach the database server"),
    ],
)
def test_bad_urls_give_one_line_errors(url, words):
    with pytest.raises(DatabaseError, match=words):
        open_store(url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "malformed database URL"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/gloss", "cannot reach the database server"),
    ],
)
def test_cli_prints_one_line_and_no_traceback(url, words, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gloss.pipeline.cli", "--database", url, "db", "current"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == DatabaseError.exit_code
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.empty_database
def test_two_processes_opening_an_empty_database_at_once_both_get_the_schema(db_url, tmp_path):
    """Schema creation is serialised (BEGIN IMMEDIATE, an advisory lock): the second
    opener waits, then finds the schema made, instead of failing half way."""
    from tests.test_integrity import TRIALS, race

    for trial in range(TRIALS):
        if db_url.startswith("sqlite"):
            url = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        else:
            url = db_url
            engine = create_engine(url)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            engine.dispose()
        results = race(lambda u=url: open_store(u), lambda u=url: open_store(u))
        errors = [r for r in results if isinstance(r, Exception)]
        assert errors == [], f"trial {trial}: {errors}"
        for store in results:
            assert store.sources() == []
            store.close()
        assert db.current_revision(url) == db.head_revision()


def test_examples_are_packed_by_0008_and_unpacked_by_its_downgrade(db_url):
    """0008 moves each feature's example rows into one packed row, and back."""
    from gloss.store import ExampleIn, WindowIn, encode_acts

    with open_store(db_url) as store:
        subject = store.get_or_create_subject("s", "/s", "r", "bert")
        source = store.get_or_create_source(subject, "layer.0.mlp", "neurons", 3, "p")
        windows = store.add_windows(
            subject, [WindowIn("d", 4 * i, [i, i + 1, i + 2, 9], ["a", "b", "c", "d"])
                      for i in range(5)]
        )  # fmt: skip
        store.write_mined_features(source, [
            MinedFeature(f, 2.0, 0.1, 0.1, 20, None, [
                ExampleIn(w, ("explain", "holdout")[k % 2], ("top", "quantile:2")[k // 3],
                          k, 0.5 * k, encode_acts([0.0, 0.25 * k * f, 0.0, -1.5][: 2 + k % 3]))
                for k, w in enumerate(windows[f:])
            ])
            for f in range(3)
        ])  # fmt: skip
        ids = [f.id for f in store.features(source)]
        before = {i: store.examples(i) for i in ids}
    assert sum(map(len, before.values())) == 5 + 4 + 3
    db.downgrade(db_url, "0007")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM examples")).scalar() == 12
    engine.dispose()
    assert "feature_examples" not in tables(db_url)
    db.upgrade(db_url)
    with open_store(db_url) as store:
        assert {i: store.examples(i) for i in ids} == before


def test_the_head_read_from_the_migration_files_is_alembics(newer_migrations, monkeypatch):
    from alembic.script import ScriptDirectory

    for folder in (db.MIGRATIONS, newer_migrations):
        monkeypatch.setattr(db, "MIGRATIONS", folder)
        script = ScriptDirectory.from_config(db._alembic_config())
        assert db.head_revision() == script.get_current_head()
        assert db._known_revisions() == {r.revision for r in script.walk_revisions()}
    assert db.head_revision() == "9999"

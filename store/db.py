"""Engines, schema revisions and the friendly errors around them.

`connect(url)` is the one way gloss gets an engine: it resolves the URL, turns
every connection problem into a one-line `DatabaseError`, creates an empty
database at the newest revision, and refuses a database at another revision.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from gloss.store.errors import DatabaseError, SchemaAheadError, SchemaBehindError

if TYPE_CHECKING:
    from alembic.config import Config

DEFAULT_URL = "sqlite:///gloss.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS = Path(str(resources.files("gloss.migrations")))
SCHEMA_LOCK_KEY = 0x676C6F7373  # "gloss": the advisory lock that serialises migrations


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get("GLOSS_DATABASE_URL") or DEFAULT_URL


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def create(url: str | None = None) -> Engine:
    """An engine for `url` with gloss's SQLite settings; no connection is made yet."""
    url = resolve_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            f"malformed database URL {url!r}: expected e.g. sqlite:///gloss.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(
            f"unsupported database URL {describe(url)}: gloss speaks sqlite:// and postgresql://"
        )
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                parent = Path(database).expanduser().resolve().parent
                if not parent.is_dir():
                    raise DatabaseError(
                        f"cannot open {describe(url)}: folder {parent} does not exist"
                    )
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError:
        raise DatabaseError(
            f"unsupported database driver in {describe(url)}: use sqlite:// or postgresql+psycopg://"
        ) from None
    except ModuleNotFoundError as error:
        raise DatabaseError(
            f"the driver for {describe(url)} is not installed ({error.name}): "
            "pip install 'gloss[postgres]'"
        ) from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 64 MiB of page cache (the default is 2 MiB): mining writes tens of thousands of
    # example rows per transaction into three B-trees.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _wal(cursor) -> None:
    """Switch to WAL, waiting for other connections as the busy timeout would.

    SQLite answers "database is locked" at once, without its busy handler, when a new
    database is switched to WAL while another connection holds a lock on it: two
    processes opening a fresh file at the same moment.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _alembic_config() -> Config:
    from alembic.config import Config  # only to migrate: importing alembic takes 0.5 s

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    revisions = _revisions()
    revised = set(revisions.values())
    return next((r for r in revisions if r not in revised), "")


def _known_revisions() -> set[str]:
    return set(_revisions())


_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_REVISES = re.compile(r"^down_revision\s*=\s*(?:[\"']([^\"']+)[\"']|None)", re.MULTILINE)


def _revisions() -> dict[str, str | None]:
    """Each migration's revision and the one it revises, read from the files as Alembic
    does, without importing Alembic: every command checks the head, few migrate."""
    out: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        revision, revises = _REVISION.search(source), _REVISES.search(source)
        if revision and revises:
            out[revision.group(1)] = revises.group(1)
    return out


def _stamped(conn: Connection) -> str | None:
    """The revision in Alembic's version table, or None where there is none."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _wrap_connection_error(url: str, error: DBAPIError) -> DatabaseError:
    message = str(getattr(error, "orig", error)).strip().splitlines()[0]
    lowered = message.lower()
    if "file is not a database" in lowered or "malformed" in lowered:
        return DatabaseError(
            f"{describe(url)} is not a usable SQLite database (corrupt?): {message}"
        )
    if make_url(url).get_backend_name() == "sqlite":
        return DatabaseError(f"cannot open {describe(url)}: {message}")
    return DatabaseError(f"cannot reach the database server at {describe(url)}: {message}")


def current_revision(url: str | None = None, engine: Engine | None = None) -> str | None:
    url = resolve_url(url)
    engine = engine or create(url)
    try:
        with engine.connect() as conn:
            return _stamped(conn)
    except DBAPIError as error:
        raise _wrap_connection_error(url, error) from None


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to `revision`; returns (before, after)."""
    url = resolve_url(url)
    engine = create(url)
    before = current_revision(url, engine)
    if before is not None and before not in _known_revisions():
        raise SchemaAheadError(_ahead_message(url, before))
    _migrate(engine, url, "upgrade", revision)
    return before, current_revision(url, engine) or ""


def downgrade(url: str | None = None, revision: str = "base") -> None:
    url = resolve_url(url)
    _migrate(create(url), url, "downgrade", revision)


def _migrate(
    engine: Engine, url: str, direction: str, revision: str, *, create: bool = False
) -> None:
    """Run Alembic in one transaction that holds the schema lock.

    Two processes opening an empty database at once must not both create it: the
    lock (an advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite) makes the second
    wait, and with `create` it then finds the schema made and leaves it alone.
    """
    config = _alembic_config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
            if create:
                if _stamped(conn) is not None:
                    return
                if set(inspect(conn).get_table_names()) - {"alembic_version"}:
                    raise DatabaseError(
                        f"{describe(url)} has tables but no gloss schema revision: "
                        "point gloss at an empty database or at one gloss created"
                    )
            from alembic import command

            config.attributes["connection"] = conn
            getattr(command, direction)(config, revision)
    except DBAPIError as error:
        raise _wrap_connection_error(url, error) from None
    finally:
        engine.dispose()


def _ahead_message(url: str, revision: str) -> str:
    return (
        f"{describe(url)} is at schema revision {revision}, which this gloss does not know "
        f"(its newest is {head_revision()}): the database was written by a newer gloss; upgrade gloss"
    )


def connect(url: str | None = None, *, read_only: bool = False) -> Engine:
    """An engine on a database at the newest revision, creating the schema in an empty one.

    `read_only` (commands that only read) creates and migrates nothing: a missing SQLite
    file or an empty database is a one-line error naming the URL.
    """
    url = resolve_url(url)
    engine = create(url)  # a malformed URL fails here, with its one-line error
    if read_only:
        must_exist(url)
    current = current_revision(url, engine)
    head = head_revision()
    if current is None:
        if read_only:
            raise DatabaseError(
                f"{describe(url)} holds no gloss database yet: run gloss run (or gloss mine) "
                "first, or point GLOSS_DATABASE_URL / --database at the one it filled"
            )
        _migrate(engine, url, "upgrade", "head", create=True)
        current = current_revision(url, engine) or ""
    if current == head:
        return engine
    if current not in _known_revisions():
        raise SchemaAheadError(_ahead_message(url, current))
    raise SchemaBehindError(
        f"{describe(url)} is at schema revision {current}, older than this gloss ({head}): "
        "run gloss db upgrade"
    )


def must_exist(url: str) -> None:
    """SQLite creates a missing file on connect: a mistyped path must not become a database."""
    parsed = make_url(create(url).url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database or ""
    if database in ("", ":memory:") or Path(database).expanduser().exists():
        return
    raise DatabaseError(
        f"no database at {describe(url)}: run gloss run (or gloss mine) first, or point "
        "GLOSS_DATABASE_URL / --database at the one it filled"
    )

"""Shared fixtures: real databases (a SQLite file and, when configured, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gloss.store import Store, open_store

PG_ENV = "GLOSS_TEST_POSTGRES_URL"


def postgres_server_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gloss.db'}"


def _admin(server: str):
    return create_engine(
        make_url(server).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )


def _database_url(server: str, name: str) -> str:
    return (
        make_url(server)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database migrated to head once per test session; each test gets a copy of it."""
    server = postgres_server_url()
    if not server:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)"
        )
    name = f"gloss_template_{uuid.uuid4().hex[:12]}"
    admin = _admin(server)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    open_store(_database_url(server, name)).close()
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(request) -> Iterator[str]:
    """A fresh PostgreSQL database at head (copied from the template), dropped afterwards.

    Tests marked `empty_database` get an empty one instead (for migration tests).
    """
    server = postgres_server_url()
    if not server:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)"
        )
    empty = request.node.get_closest_marker("empty_database") is not None
    template = "" if empty else f' TEMPLATE "{request.getfixturevalue("postgres_template")}"'
    name = f"gloss_test_{uuid.uuid4().hex[:12]}"
    admin = _admin(server)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
    try:
        yield _database_url(server, name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(sqlite_url) -> Iterator[Store]:
    s = open_store(sqlite_url)
    yield s
    s.close()


# ---------------------------------------------------------------- real models (mining)


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 encoder, loaded once per test session."""
    from gloss.pipeline.subjects import load_subject

    return load_subject("minilm")


# ---------------------------------------------------------------- a scripted LLM endpoint


@pytest.fixture
def server():
    """A scripted OpenAI-compatible server on loopback (tests/scripted_llm.py)."""
    from tests.scripted_llm import ScriptedLLM

    with ScriptedLLM() as s:
        yield s

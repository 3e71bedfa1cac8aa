"""What every room of the store shares: the engine, its transactions, and input checks.

`StoreBase` holds the engine and hands out transactions: `session()` for plain reads
and writes, `serialized(feature_id)` for check-then-write. Each room (registry, mined,
pending, labels, search, runs) is a mixin over it, and `Store` in `store.api` composes
them. A room never calls another room's methods; what two rooms need lives here or in
a module function that takes a session. The functions below check what callers pass
in, the same way in every room.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Engine, bindparam, false, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from gloss.store.errors import InputError, NotFoundError
from gloss.store.models import Explanation, Feature, FeatureSource, Run

MAX_ID = 2**31 - 1  # ids are 32-bit integer columns (PostgreSQL); SQLite takes more, none need it
MAX_INDEX = 2**31 - 1  # feature indices are 32-bit


class StoreBase:
    """The engine and its transactions. Every write method of a room commits before it
    returns: a crash loses only what was in flight."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    _encoder: Any = None

    @property
    def encoder(self) -> Any:
        """The sentence embedder of label vectors (`store.vectors.Encoder`): the bundled
        MiniLM (`store.embedder`), loaded on first use, unless one is set."""
        if self._encoder is None:
            from gloss.store.embedder import embedder

            self._encoder = embedder("minilm")
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Any) -> None:
        self._encoder = encoder

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back otherwise."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def serialized(
        self,
        feature_id: int | None = None,
        *,
        source_id: int | None = None,
        run_id: int | None = None,
        key: str | None = None,
    ) -> Iterator[Session]:
        """A write transaction for check-then-write: what it reads nobody changes until it ends.

        SQLite takes the database's write lock first (BEGIN IMMEDIATE; otherwise the
        transaction would begin only at its first write, after the check). PostgreSQL
        locks one row: the feature's, which every label write of that feature locks too;
        the source's, which every mining lease of that source locks; a run group's, which
        every budget booking of the group locks; or, for `key` (a name with no row, such
        as a plan that has no group yet), a transaction advisory lock on it.
        """
        with self.session() as s:
            if self.dialect == "sqlite":
                s.execute(text("BEGIN IMMEDIATE"))
            elif key is not None:
                number = int.from_bytes(
                    hashlib.sha256(key.encode()).digest()[:8], "big", signed=True
                )
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": number})
            else:
                for model, row in (
                    (Feature, feature_id),
                    (FeatureSource, source_id),
                    (Run, run_id),
                ):
                    if row is not None:
                        s.execute(select(model.id).where(model.id == row).with_for_update())
            yield s

    def _feature_of(self, explanation_id: int) -> int:
        """The feature a label belongs to: the row `serialized` locks before a label write."""
        check_id(explanation_id, "explanation")
        with self.session() as s:
            feature_id = s.scalar(
                select(Explanation.feature_id).where(Explanation.id == explanation_id)
            )
        if feature_id is None:
            raise NotFoundError(f"no explanation with id {explanation_id}")
        return feature_id

    def _insert(self, table: Any) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING for this dialect."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)


def index_in(indices: Sequence[int]) -> Any:
    """`features.index IN (...)` for any number of indices: ranges where contiguous, and
    literals otherwise, so PostgreSQL's 65,535-parameter limit never applies."""
    ordered = sorted(set(indices))
    runs: list[tuple[int, int]] = []
    for i in ordered:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    if not runs:
        return false()
    if len(runs) <= 50:
        return or_(
            *(Feature.index.between(a, b) if a != b else Feature.index == a for a, b in runs)
        )
    return Feature.index.in_(bindparam("indices", ordered, expanding=True, literal_execute=True))


def whole_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def check_id(value: int, what: str) -> None:
    """An id out of the columns' range names nothing (and would overflow PostgreSQL's)."""
    if not 0 <= value <= MAX_ID:
        raise NotFoundError(f"no {what} with id {value}")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(value: str, what: str, *, multiline: bool = False) -> str:
    """Text a person or a model wrote: a label on one line, control characters refused.

    PostgreSQL cannot store NUL at all, and terminal control sequences in labels
    would reach every terminal that lists them.
    """
    value = value.strip() if multiline else " ".join(value.split())
    if not value and not multiline:
        raise InputError(f"{what} needs non-empty text")
    if _CONTROL.search(value):
        raise InputError(f"{what} may not contain control characters: {value[:80]!r}")
    return value

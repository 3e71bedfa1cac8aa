"""Search by meaning: sentence embeddings of current labels, kept beside them and searched exactly.

Every current label gets one float32 unit vector (table `label_vectors`, migration 0011)
from an `Encoder`, the bundled MiniLM by default. The database cannot embed text, but it
keeps the list of current labels without a vector (`label_vectors_todo`, by triggers);
whoever writes labels in bulk embeds from that list (`gloss run`, `gloss embed`,
imports), and a search by meaning first embeds the few still on it (a label just edited
in the review app), so it never misses one.

Search is exact: the query's cosine with every vector, one matrix product in memory.
`VectorIndex` keeps the matrix between searches of a long-lived process (the review
app) and reads only the rows added since, which max(id) reveals (ids only grow). A
vector dropped since (its label was rejected or replaced) may linger in memory, which
is harmless: search joins every candidate with the current labels, so it is never a
result, and the matrix is read afresh once such changes could add up. pgvector is not
needed; 100,000 labels take 150 MB and a few milliseconds per query.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
from sqlalchemy import CursorResult, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase
from gloss.store.errors import InputError, ModelError
from gloss.store.models import Explanation, LabelVector, LabelVectorTodo
from gloss.store.statuses import CURRENT_STATUSES

# At most this many labels are embedded by a search itself; a bigger backlog is a job.
EMBED_AT_SEARCH = 2_000
BATCH = 512


class Encoder(Protocol):
    """Texts to unit vectors: what `Store.search(like=...)` and `embed_labels` need."""

    name: str

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors."""
        ...


def pack(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class Vectors(StoreBase):
    """The vectors of current labels: which are missing, and writing them."""

    def labels_without_vector(self, limit: int | None = None) -> list[tuple[int, str]]:
        """(explanation id, text) of current labels with no vector, oldest first."""
        with self.session() as s:
            return missing(s, limit)

    def embed_labels(self, *, limit: int | None = None, on_batch: Any = None) -> int:
        """Embed current labels that have no vector yet, in batches; how many were embedded.

        Safe beside other writers: a label that changed while it was embedded gets no
        vector, and is picked up by the next call.
        """
        done = 0
        while limit is None or done < limit:
            size = BATCH if limit is None else min(BATCH, limit - done)
            with self.session() as s:
                todo = missing(s, size)
            if not todo:
                break
            done += put_vectors(self, todo)
            if on_batch is not None:
                on_batch(done)
            if len(todo) < size:
                break
        return done

    def drop_label_vectors(self) -> int:
        """Forget every label vector (before embedding again with another model)."""
        with self.session() as s:
            dropped = cast("CursorResult[Any]", s.execute(delete(LabelVector))).rowcount
            s.execute(delete(LabelVectorTodo))
            s.execute(
                insert(LabelVectorTodo).from_select(
                    ["explanation_id"],
                    select(Explanation.id).where(Explanation.status.in_(CURRENT_STATUSES)),
                )
            )
            return dropped


def put_vectors(store: StoreBase, labels: list[tuple[int, str]]) -> int:
    """Embed these labels and store the vectors of those still current and unchanged."""
    encoder = store.encoder
    vectors = encode(encoder, [text for _, text in labels])
    with store.serialized() as s:
        return _insert(store, s, encoder.name, labels, vectors)


def encode(encoder: Encoder, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(encoder.vectors(texts), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ModelError(
            f"sentence embedder {encoder.name} gave shape {vectors.shape} for {len(texts)} texts"
        )
    return vectors


def missing(s: Session, limit: int | None) -> list[tuple[int, str]]:
    """(explanation id, text) of current labels without a vector, oldest first."""
    stmt = (
        select(Explanation.id, Explanation.text)
        .join(LabelVectorTodo, LabelVectorTodo.explanation_id == Explanation.id)
        .order_by(LabelVectorTodo.explanation_id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(i, t) for i, t in s.execute(stmt)]


def _insert(
    store: StoreBase,
    s: Session,
    model: str,
    labels: list[tuple[int, str]],
    vectors: np.ndarray,
) -> int:
    """Store vectors for the labels that are still current with the same text.

    On PostgreSQL the labels are share-locked first: a concurrent edit either committed
    before (and the label is skipped) or waits until these rows are in, where its
    trigger drops them. Two workers embedding the same label store it once.
    """
    ids = [i for i, _ in labels]
    stmt = select(Explanation.id, Explanation.text).where(
        Explanation.id.in_(bindparam("ids", ids, expanding=True)),
        Explanation.status.in_(CURRENT_STATUSES),
    )
    if store.dialect == "postgresql":
        stmt = stmt.with_for_update(read=True)
    now = dict(s.execute(stmt).all())
    have = set(
        s.scalars(
            select(LabelVector.explanation_id).where(
                LabelVector.explanation_id.in_(bindparam("ids", ids, expanding=True))
            )
        )
    )
    rows = [
        {"explanation_id": i, "model": model, "vector": pack(v)}
        for (i, text), v in zip(labels, vectors, strict=True)
        if now.get(i) == text and i not in have
    ]
    if rows:
        s.execute(store._insert(LabelVector.__table__).on_conflict_do_nothing(), rows)
    done = [i for i, text in labels if now.get(i) == text]  # a changed label stays to do
    s.execute(
        delete(LabelVectorTodo).where(
            LabelVectorTodo.explanation_id.in_(bindparam("done", done, expanding=True))
        )
    )
    return len(rows)


class VectorIndex:
    """The vectors of current labels in memory, with the rows added since read on each use.

    Thread-safe: the review app searches from several threads at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first = self._last = 0  # the table's min and max id when last looked at
        self._read = 0  # rows read by the last full read
        self._ids = np.zeros(0, dtype=np.int64)  # explanation ids, by row of the matrix
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._model = ""
        self._queries: dict[tuple[str, str], np.ndarray] = {}

    def query(self, encoder: Encoder, like: str) -> np.ndarray:
        """The unit embedding of a query, remembered: paging through results asks again."""
        key = (encoder.name, like)
        if key not in self._queries:
            vector = encode(encoder, [like])[0]
            if len(self._queries) >= 256:
                self._queries.pop(next(iter(self._queries)))
            self._queries[key] = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return self._queries[key]

    def snapshot(self, s: Session) -> tuple[np.ndarray, np.ndarray, str]:
        """(explanation ids, their vectors, model): every current label's vector, and
        perhaps some of labels no longer current."""
        # two subqueries: SQLite reads min() or max() alone off the index, both together by a scan
        first, last = s.execute(
            select(
                select(func.min(LabelVector.id)).scalar_subquery(),
                select(func.max(LabelVector.id)).scalar_subquery(),
            )
        ).one()
        first, last = first or 0, last or 0
        with self._lock:
            if first != self._first or last < self._last:  # dropped and embedded again
                self._read_rows(s, 0, full=True)
            elif last > self._last:
                grown = len(self._ids) - self._read
                self._read_rows(s, self._last, full=grown > max(1_000, self._read // 10))
            self._first, self._last = first, last
            return self._ids, self._matrix, self._model

    def _read_rows(self, s: Session, after: int, *, full: bool) -> None:
        """Read the rows after id `after` (all of them when `full`) into the matrix."""
        after = 0 if full else after
        sql = (
            "SELECT id, explanation_id, model, vector FROM label_vectors "
            f"WHERE id > {int(after)} ORDER BY id"
        )
        connection = s.connection()  # straight from the driver: no per-row processing
        if connection.dialect.name == "postgresql":  # in binary: bytea as hex text is 2x slower
            driver: Any = connection.connection.driver_connection
            rows = driver.execute(sql, binary=True).fetchall()
        else:
            rows = connection.exec_driver_sql(sql).all()
        models = sorted({m for _, _, m, _ in rows})
        ids = np.array([e for _, e, _, _ in rows], dtype=np.int64)
        if rows:
            matrix = np.frombuffer(b"".join(v for *_, v in rows), dtype="<f4")
            matrix = matrix.reshape(len(rows), -1)
        else:
            matrix = np.zeros((0, self._matrix.shape[1] if self._matrix.size else 0), np.float32)
        kept = set(models) | ({self._model} if len(self._ids) and not full else set())
        if len(kept) > 1:
            raise InputError(
                f"labels were embedded by different models ({', '.join(sorted(kept))}): "
                "run gloss embed --again"
            )
        if not full and len(self._ids):
            if matrix.size and matrix.shape[1] != self._matrix.shape[1]:
                raise InputError("label vectors of different sizes: run gloss embed --again")
            # a label embedded again (its text changed) keeps only its newest vector
            old = ~np.isin(self._ids, ids)
            ids = np.concatenate([self._ids[old], ids])
            matrix = np.concatenate([self._matrix[old], matrix.reshape(-1, self._matrix.shape[1])])
        else:
            self._read = len(rows)
        self._ids, self._matrix = ids, matrix
        self._model = models[0] if models else self._model if len(ids) else ""

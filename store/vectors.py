"""Search by meaning: sentence embeddings of current labels, kept beside them and searched exactly.

Every current label gets one float32 unit vector (table `label_vectors`, migration 0011)
from an `Encoder`, the pipeline's sentence embedder (the bundled MiniLM): the database
cannot embed text itself, so whoever writes labels in bulk embeds them (`gloss run`,
`gloss embed`, imports), and a search by meaning first embeds the few labels still
without a vector (one just edited in the review app), so it never misses one.

Search is exact: the query's cosine with every vector, one matrix product in memory.
`VectorIndex` keeps the matrix between searches of a long-lived process (the review
app) and reloads only what changed, which it learns from (count, max id) of the table:
a trigger drops a label's vector when the label stops being current or changes text,
and ids only grow. pgvector is not needed; 100,000 labels take 150 MB and a few
milliseconds per query.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
from sqlalchemy import CursorResult, bindparam, delete, func, select
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase
from gloss.store.errors import InputError, ModelError
from gloss.store.models import Explanation, LabelVector
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
            return cast("CursorResult[Any]", s.execute(delete(LabelVector))).rowcount


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
    has_vector = select(LabelVector.id).where(LabelVector.explanation_id == Explanation.id)
    stmt = (
        select(Explanation.id, Explanation.text)
        .where(Explanation.status.in_(CURRENT_STATUSES), ~has_vector.exists())
        .order_by(Explanation.id)
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
    return len(rows)


class VectorIndex:
    """The vectors of current labels in memory, refreshed from the table when it changes.

    Thread-safe: the review app searches from several threads at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, int] = (0, 0)
        self._ids = np.zeros(0, dtype=np.int64)  # explanation ids, by row of the matrix
        self._rows = np.zeros(0, dtype=np.int64)  # label_vectors ids
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._model = ""

    def snapshot(self, s: Session) -> tuple[np.ndarray, np.ndarray, str]:
        """(explanation ids, their vectors, model) as the table holds them now."""
        count, top = s.execute(select(func.count(), func.max(LabelVector.id))).one()
        key = (count, top or 0)
        with self._lock:
            if key != self._key:
                self._refresh(s, key)
            return self._ids, self._matrix, self._model

    def _refresh(self, s: Session, key: tuple[int, int]) -> None:
        new = s.execute(
            select(
                LabelVector.id, LabelVector.explanation_id, LabelVector.model, LabelVector.vector
            )
            .where(LabelVector.id > self._key[1])
            .order_by(LabelVector.id)
        ).all()
        rows, ids, matrix = self._rows, self._ids, self._matrix
        if key[0] != len(rows) + len(new):  # some were dropped: keep the rows still there
            kept = np.isin(rows, np.asarray(s.scalars(select(LabelVector.id)).all()))
            rows, ids, matrix = rows[kept], ids[kept], matrix[kept]
        if new:
            models = {m for _, _, m, _ in new} | ({self._model} if len(rows) else set())
            if len(models) > 1:
                raise InputError(
                    f"labels were embedded by different models ({', '.join(sorted(models))}): "
                    "run gloss embed --again"
                )
            self._model = new[0][2]
            added = np.frombuffer(b"".join(v for *_, v in new), dtype="<f4")
            added = added.reshape(len(new), -1)
            if matrix.size and added.shape[1] != matrix.shape[1]:
                raise InputError("label vectors of different sizes: run gloss embed --again")
            rows = np.concatenate([rows, np.array([r for r, *_ in new], dtype=np.int64)])
            ids = np.concatenate([ids, np.array([e for _, e, *_ in new], dtype=np.int64)])
            matrix = np.concatenate([matrix.reshape(-1, added.shape[1]), added])
        self._rows, self._ids, self._matrix, self._key = rows, ids, matrix, key

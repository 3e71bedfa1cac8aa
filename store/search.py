"""Search: features with their current labels, listed, counted, searched and exported.

Every read here returns FeatureRows (a feature with its current label) or flat export
dicts; `layer_peaks` lists a shared dictionary's features by the point they peak at.
`search` answers the CLI's `gloss search`, the web app's lists and the Python API with
one set of filters and orders. Its plans are chosen here, per database, because
neither planner finds them alone at 100,000 labels:

- text ranked: rank the ids of matching labels first (FTS5 on SQLite, the
  `label_search` tsvector table on PostgreSQL), then join and filter only the best;
- score ordered: read a page of current labels from the partial score index;
- everything else: one joined query with keyset (`after`) or offset paging.

Label text search only sees current labels: the migrations' triggers keep the search
index to exactly those, one per feature.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn

import numpy as np
from sqlalchemy import Float, Integer, bindparam, case, func, or_, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from gloss.store import vectors
from gloss.store.base import MAX_ID, StoreBase
from gloss.store.errors import InputError, NotFoundError
from gloss.store.models import (
    Explanation,
    Feature,
    FeatureScore,
    FeatureSource,
    LabelVectorTodo,
    Review,
    Score,
    Subject,
)
from gloss.store.registry import find_source
from gloss.store.statuses import (
    CURRENT_SQL,
    CURRENT_STATUSES,
    MINED_STATUSES,
    STATUS_FILTERS,
    UNLABELED,
    ExplanationStatus,
    FeatureStatus,
)
from gloss.store.types import EFFECT_METHODS, FeatureRow, LayerPeaks, SourceInfo, points_in_order

SEARCH_ORDERS = ("rank", "score", "-score", "id")
MAX_OFFSET = 2**31  # deeper than any list anyone pages through; keeps LIMIT arithmetic in range
MAX_LIMIT = 10_000
_WORD = re.compile(r"\w+", re.UNICODE)


class Search(StoreBase):
    _vectors: vectors.VectorIndex | None = None

    def search(
        self,
        query: str = "",
        *,
        min_score: float | None = None,
        max_score: float | None = None,
        source: str | None = None,
        status: str | None = None,
        reviewed: bool | None = None,
        order: str = "rank",
        limit: int = 20,
        offset: int = 0,
        after: str | None = None,
        like: str | None = None,
    ) -> list[FeatureRow]:
        """Features with their current labels, full-text ranked when `query` is given.

        `like` ranks labeled features by meaning instead: the cosine of each current
        label's sentence embedding with the embedding of `like` (exact, highest first,
        in `FeatureRow.similarity`); `query` words and the filters then only filter.

        `status` filters the label status (proposed, accepted, …), the feature
        status (new, mined, dead) or `unlabeled`; `reviewed` keeps features with
        (True) or without (False) a review. `order` is rank (text relevance, else
        score), score (best first), -score (worst first) or id. Every word must
        match (stemmed); any query string is safe: it is reduced to words before
        it reaches FTS5 or tsquery. Relevance puts the shortest matching label
        first (a short label holding every word is about them), then the best
        score: the same order on both databases, served by an index (migration 0004).

        Page with `after=row.cursor` of the last row seen (keyset paging: every
        page costs the same at 100,000 features) or with `offset` (fine for text
        matches, slow deep into big score-ordered lists).
        """
        if order not in SEARCH_ORDERS:
            raise InputError(f"unknown order {order!r}: use rank, score, -score or id")
        if not 0 <= offset <= MAX_OFFSET:
            raise InputError(f"offset {offset} is out of range: use 0 to {MAX_OFFSET:,}")
        if not 0 <= limit <= MAX_LIMIT:
            raise InputError(f"limit {limit} is out of range: use 0 to {MAX_LIMIT:,}")
        words = _WORD.findall(query or "")
        filters = (min_score, max_score, source, status, reviewed)
        if like is not None:
            if order != "rank" or after is not None:
                raise InputError(
                    "a search by meaning is ranked by similarity and pages by offset: "
                    "leave the order at rank and page with offset"
                )
            return self._by_meaning(like, words, filters, limit, offset)
        if words and order == "rank":
            if after is not None:
                raise InputError("text-ranked results page by offset, not by cursor")
            return self._ranked(words, filters, limit, offset)
        if not words and order in ("score", "rank", "-score"):
            rows = self._scored_page(filters, limit, offset, after, order != "-score")
            if rows is not None:
                return rows
        stmt = _filter_rows(self._feature_rows(words), *filters)
        if order in ("score", "rank"):
            stmt = _after(stmt, after, descending=True)
            stmt = stmt.order_by(Explanation.score.desc().nulls_last(), Feature.id)
        elif order == "-score":
            stmt = _after(stmt, after, descending=False)
            stmt = stmt.order_by(Explanation.score.asc().nulls_last(), Feature.id)
        else:
            if after is not None:
                stmt = stmt.where(Feature.id > _parse_cursor(after)[1])
            stmt = stmt.order_by(Feature.id)
        stmt = stmt.limit(limit).offset(offset)
        with self.session() as s:
            return [_feature_row(row) for row in s.execute(stmt).all()]

    def count(
        self,
        query: str = "",
        *,
        min_score: float | None = None,
        max_score: float | None = None,
        source: str | None = None,
        status: str | None = None,
        reviewed: bool | None = None,
        like: str | None = None,
    ) -> int:
        """How many features `search` would page through with these filters."""
        words = _WORD.findall(query or "")
        if (
            like is not None
            and not words
            and (min_score, max_score, source, status, reviewed) == (None,) * 5
        ):
            with self.session() as s:  # every labeled feature has a similarity
                return s.scalar(text(f"SELECT count(*) FROM explanations WHERE {CURRENT_SQL}")) or 0
        if like is not None:
            stmt = _filter_rows(
                self._feature_rows(words, labeled=True),
                min_score,
                max_score,
                source,
                status,
                reviewed,
            )
            with self.session() as s:
                return s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        if words and (min_score, max_score, source, status, reviewed) == (None,) * 5:
            # The search index holds exactly the current labels, one per feature.
            with self.session() as s:
                matching = text(f"SELECT count(*) FROM ({self._matching_sql}) AS m")
                return s.scalar(matching, self._match_params(words)) or 0
        if not words and (min_score, max_score, status) == (None,) * 3:
            # Each feature has at most one current label, so no label join is needed.
            stmt = select(func.count()).select_from(Feature)
            if source is not None:
                stmt = stmt.join(FeatureSource).where(FeatureSource.name == source)
            if reviewed is not None:
                has_review = select(Review.id).where(Review.feature_id == Feature.id).exists()
                stmt = stmt.where(has_review if reviewed else ~has_review)
            with self.session() as s:
                return s.scalar(stmt) or 0
        stmt = _filter_rows(
            self._feature_rows(words),
            min_score,
            max_score,
            source,
            status,
            reviewed,
        )
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(stmt.subquery())) or 0

    def next_to_review(self, *, source: str | None = None, skip: int = 0) -> FeatureRow | None:
        """The review queue's head: a labeled, never-reviewed feature, lowest score first.

        Unscored labels come after scored ones; `skip` steps past features the
        reviewer passed over.
        """
        rows = self.search(
            source=source,
            status=ExplanationStatus.PROPOSED,
            reviewed=False,
            order="-score",
            limit=1,
            offset=skip,
        )
        return rows[0] if rows else None

    def current_labels(self, source_id: int) -> dict[int, FeatureRow]:
        """Every feature of a source that has a current label, by feature index."""
        stmt = self._feature_rows([], labeled=True).where(Feature.source_id == source_id)
        with self.session() as s:
            return {row.index: row for row in map(_feature_row, s.execute(stmt).all())}

    def export(
        self, *, source: str | None = None, batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every feature with its current label, scores and provenance, as flat dicts.

        Streams in batches of `batch_size` features by id (one short transaction
        per batch), so a million features never sit in memory at once. Keys are
        EXPORT_FIELDS; `scores` maps each method to its latest value for the label.
        """
        last_id = 0
        while True:
            with self.session() as s:
                rows = _export_batch(s, last_id, source, batch_size)
            if not rows:
                return
            yield from rows
            last_id = rows[-1]["feature_id"]

    def layer_peaks(self, source: int | str, *, top: int | None = None) -> list[LayerPeaks]:
        """For each point of a shared dictionary (shallowest first), the features whose layer
        map peaks there, strongest peak first (at most `top`), with current labels and maps.

        Features that never fire are left out. The peak is read in Python, not SQL: JSON
        queries differ between the databases and every mined feature is read once anyway.
        """
        with self.session() as s:
            info = find_source(s, source)
            if top is not None and top < 1:
                raise InputError("--top must be at least 1")
            stmt = (
                self._feature_rows([])
                .add_columns(Feature.layers)
                .where(Feature.source_id == info.id, Feature.layers.is_not(None))
            )
            peaks, counts = _peaks_by_point(s.execute(stmt).yield_per(1000), top)
            if not peaks:
                _no_layer_map(s, info)
        return [
            LayerPeaks(
                point,
                counts.get(point, 0),
                [(r, m) for *_, r, m in sorted(peaks[point], key=lambda e: e[:2], reverse=True)],
            )
            for point in points_in_order(dict.fromkeys(peaks, 0.0)) or {}
        ]

    # ------------------------------------------------------------ plans

    def _by_meaning(
        self, like: str, words: list[str], filters: tuple, limit: int, offset: int
    ) -> list[FeatureRow]:
        """Rank every current label by cosine with `like`, then join and filter the best.

        Labels still without a vector (a few just written, or edited in the review app)
        are embedded first. As in `_ranked`, the best 4 pages are joined and filtered
        first; when the filters leave too few, every label they pass is ranked.
        """
        if not like.strip():
            raise InputError("a search by meaning needs some text to compare labels with")
        encoder = self.encoder
        self._embed_missing()
        query = self._vector_index().query(encoder, like)
        with self.session() as s:
            ids, matrix, model = self._vector_index().snapshot(s)
            if len(ids) and model != encoder.name:
                raise InputError(
                    f"labels were embedded by {model}, not {encoder.name}: "
                    "run gloss embed --again to embed them with it"
                )
            if not len(ids):
                return []
            similarity = matrix @ query
            k = max(4 * (offset + limit), 200)
            if k < len(ids):
                best = np.argpartition(-similarity, k)[:k]
                passed = self._passing(s, ids[best], words, filters)
                if passed.sum() >= offset + limit:
                    ids, similarity = ids[best][passed], similarity[best][passed]
                    page = _best_first(ids, similarity)[offset : offset + limit]
                    return self._rows_of(s, ids[page], similarity[page])
            # every label the filters pass (only current ones: a dropped vector may linger)
            stmt = _filter_rows(self._feature_rows(words, labeled=True), *filters)
            mask = np.isin(ids, s.scalars(stmt.with_only_columns(Explanation.id)).all())
            ids, similarity = ids[mask], similarity[mask]
            page = _best_first(ids, similarity)[offset : offset + limit]
            return self._rows_of(s, ids[page], similarity[page])

    def _passing(self, s: Session, ids: np.ndarray, words: list[str], filters: tuple) -> Any:
        """Which of these labels are current and pass the words and filters (a mask):
        ids only, so the rows of a page are built for that page alone."""
        stmt = _filter_rows(self._feature_rows(words, ids=ids.tolist()), *filters)
        return np.isin(ids, s.scalars(stmt.with_only_columns(Explanation.id)).all())

    def _rows_of(self, s: Session, ids: np.ndarray, similarity: np.ndarray) -> list[FeatureRow]:
        """The feature rows of these current labels, most similar first."""
        by_id = dict(zip(ids.tolist(), similarity.tolist(), strict=True))
        rows = [
            dataclasses.replace(r, similarity=by_id[r.explanation_id])
            for r in map(_feature_row, s.execute(self._feature_rows([], ids=list(by_id))))
        ]
        return sorted(rows, key=lambda r: (-(r.similarity or 0.0), r.explanation_id or 0))

    def _embed_missing(self) -> None:
        """Give vectors to the current labels that lack them, unless there are too many."""
        with self.session() as s:
            todo = vectors.missing(s, vectors.EMBED_AT_SEARCH + 1)
            if len(todo) > vectors.EMBED_AT_SEARCH:
                waiting = s.scalar(select(func.count()).select_from(LabelVectorTodo))
                raise InputError(
                    f"{waiting:,} current labels have no vector yet: run gloss embed "
                    "(every gloss run embeds the labels it writes)"
                )
        if todo:
            vectors.put_vectors(self, todo)

    def _vector_index(self) -> vectors.VectorIndex:
        if self._vectors is None:
            self._vectors = vectors.VectorIndex()
        return self._vectors

    def _ranked(
        self, words: list[str], filters: tuple, limit: int, offset: int
    ) -> list[FeatureRow]:
        """Rank the matching labels first, then join and filter only the best of them.

        Ranking label ids alone is several times cheaper than ranking joined rows.
        When the filters leave too few of the best, the ranking is redone over all
        matches, so results are always exact.
        """
        with self.session() as s:
            hits, order = self._text_hits(s, words, max(4 * (offset + limit), 200))
            rows = self._page_of_hits(s, hits, order, filters, limit, offset)
            if len(rows) < limit and filters != (None,) * len(filters):
                hits, order = self._text_hits(s, words, None)
                rows = self._page_of_hits(s, hits, order, filters, limit, offset)
        return rows

    def _page_of_hits(
        self, s: Session, hits: Any, order: Any, filters: tuple, limit: int, offset: int
    ) -> list[FeatureRow]:
        """One page of feature rows for a subquery of ranked label ids, filters applied."""
        stmt = (
            self._feature_rows([], labeled=True)
            .join(hits, hits.c.id == Explanation.id)
            .order_by(*order)
            .limit(limit)
            .offset(offset)
        )
        return [_feature_row(row) for row in s.execute(_filter_rows(stmt, *filters))]

    def _scored_page(
        self, filters: tuple, limit: int, offset: int, after: str | None, descending: bool
    ) -> list[FeatureRow] | None:
        """The page, if scored labels fill it, read from an index of current labels by score.

        Scored labels come before unscored ones in both score orders, so a page they
        fill is exact; past them (unscored labels, unlabeled features) and for deep
        offset pages the caller runs the full query.
        """
        score, feature_id = _parse_cursor(after) if after else (None, None)
        if (after is not None and score is None) or offset + limit > 2_500:
            return None
        if descending:  # ix_explanations_current_score
            beyond, direction = "score <= :s AND (score < :s OR feature_id > :f)", "DESC"
        else:  # ix_explanations_current_score_asc
            beyond, direction = "score >= :s AND (score > :s OR feature_id > :f)", "ASC"
        nulls = " NULLS LAST" if self.dialect == "postgresql" else ""
        k = max(4 * (offset + limit), 200)  # a literal, as in _text_hits
        sql = (
            "SELECT id, score AS rank, feature_id FROM explanations "
            f"WHERE {CURRENT_SQL} AND score IS NOT NULL "
            + (f"AND {beyond} " if after else "")
            + f"ORDER BY score {direction}{nulls}, feature_id LIMIT {k}"
        )
        params = {"s": score, "f": feature_id}
        hits = (
            text(sql)
            .bindparams(**{k: v for k, v in params.items() if f":{k}" in sql})
            .columns(id=Integer, rank=Float, feature_id=Integer)
            .subquery("hits")
        )
        rank = hits.c.rank.desc() if descending else hits.c.rank.asc()
        with self.session() as s:
            rows = self._page_of_hits(s, hits, (rank, hits.c.feature_id), filters, limit, offset)
        return rows if len(rows) == limit else None

    def _text_hits(self, s: Session, words: list[str], k: int | None) -> tuple[Any, tuple]:
        """The first `k` current labels containing every word, as a subquery and its order.

        The order is (length, score DESC, id). A common word walks the rank index and
        stops after k matches; a rare one collects its matches and sorts them. Neither
        planner can tell which a word is (SQLite cannot estimate an FTS5 match;
        PostgreSQL assumes a word is spread evenly over label lengths, and walks for
        words it should not), so the number of matches decides, here.
        """
        params = self._match_params(words)
        walk = self._walk_rank_index(s, params, k)
        matching = self._matching_sql
        if self.dialect == "postgresql":
            order = "ORDER BY length, score DESC NULLS LAST, id"
            ranked = (
                "SELECT explanation_id AS id, length, score "
                "FROM label_search, websearch_to_tsquery('english', :words) AS q "
                "WHERE search_vector @@ q"
            )
            sql = (
                f"{ranked} {order}"
                if walk
                else f"WITH m AS MATERIALIZED ({ranked}) SELECT * FROM m {order}"
            )
        elif walk:
            sql = (
                "SELECT id, length(text) AS length, score FROM explanations "
                "INDEXED BY ix_explanations_search_rank "
                f"WHERE {CURRENT_SQL} AND id IN ({matching}) "
                "ORDER BY length(text), score DESC, id"
            )
        else:
            sql = (
                "SELECT e.id, length(e.text) AS length, e.score "
                f"FROM ({matching}) AS m CROSS JOIN explanations AS e "
                f"ON e.id = m.rowid WHERE e.{CURRENT_SQL} "
                "ORDER BY length(e.text), e.score DESC, e.id"
            )
        if k is not None:
            sql += f" LIMIT {int(k)}"  # a literal: SQLite plans the join around a small hits table
        hits = (
            text(sql)
            .bindparams(**params)
            .columns(id=Integer, length=Integer, score=Float)
            .subquery("hits")
        )
        return hits, (hits.c.length, hits.c.score.desc().nulls_last(), hits.c.id)

    def _walk_rank_index(self, s: Session, params: dict[str, Any], k: int | None) -> bool:
        """Whether walking the rank index beats collecting and sorting the matches.

        The walk reads about total * k / matches index entries before it has k hits
        (all `total` when k is None); collecting costs about 4 times as much per
        match (measured at 100,000 labels on both databases). So the walk wins from
        matches**2 >= total * k / 4 on, and counting stops there.
        """
        total_sql = (
            "SELECT count(*) FROM explanations_fts_docsize"
            if self.dialect == "sqlite"  # PostgreSQL: the estimate kept by (auto)analyze
            else "SELECT greatest(reltuples, 0)::bigint FROM pg_class "
            "WHERE oid = 'label_search'::regclass"
        )
        total = s.scalar(text(total_sql))
        enough = total // 4 if k is None else math.isqrt(total * k // 4)
        matches = s.scalar(
            text(f"SELECT count(*) FROM ({self._matching_sql} LIMIT {enough}) AS m"),
            params,
        )
        return matches >= enough > 0

    # ------------------------------------------------------------ the statements

    def _feature_rows(
        self, words: Sequence[str], *, labeled: bool = False, ids: Sequence[int] | None = None
    ) -> Any:
        """Every feature with its current label (FeatureRow's columns), kept to labels
        containing all `words`; only labeled features when `labeled` or `words`; only
        the labels `ids` when given."""
        status: Any = Explanation.status
        if ids is not None and self.dialect == "sqlite":
            # `+status` is no index term: SQLite without statistics would walk the status
            # index over every current label instead of looking the ids up (50x slower)
            status = UnaryExpression(status, operator=custom_op("+"), type_=status.type)
        stmt = (
            select(
                Feature.id,
                FeatureSource.name,
                Feature.index,
                Feature.status,
                Feature.max_act,
                Feature.density,
                Explanation.id,
                Explanation.text,
                Explanation.status,
                Explanation.author_kind,
                Explanation.score,
            )
            .select_from(Feature)
            .join(FeatureSource, FeatureSource.id == Feature.source_id)
            .join(
                Explanation,
                (Explanation.feature_id == Feature.id) & status.in_(CURRENT_STATUSES),
                isouter=not (labeled or words or ids is not None),
            )
        )
        if ids is not None:
            listed: Any = bindparam("ids", list(ids), expanding=True, literal_execute=True)
            stmt = stmt.where(Explanation.id.in_(listed))
        if not words:
            return stmt
        matching = text(self._matching_sql).bindparams(**self._match_params(words))
        return stmt.where(Explanation.id.in_(matching.columns(id=Integer)))

    @property
    def _matching_sql(self) -> str:
        """Ids of labels containing every word; its parameters come from `_match_params`."""
        if self.dialect == "sqlite":
            return "SELECT rowid FROM explanations_fts WHERE explanations_fts MATCH :match"
        return (
            "SELECT explanation_id FROM label_search "
            "WHERE search_vector @@ websearch_to_tsquery('english', :words)"
        )

    def _match_params(self, words: Sequence[str]) -> dict[str, Any]:
        if self.dialect == "sqlite":
            return {"match": _fts_match(words)}
        return {"words": " ".join(words)}


def _feature_row(row: Any) -> FeatureRow:
    return FeatureRow(*row)


def _best_first(ids: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Positions by similarity, highest first; ties by label id, so pages never overlap."""
    return np.lexsort((ids, -similarity))


# ---------------------------------------------------------------- filters and cursors


def _fts_match(words: Sequence[str]) -> str:
    """An FTS5 query that requires every word, each quoted so no word is syntax."""
    return " ".join(f'"{w}"' for w in words)


def _filter_rows(stmt: Any, min_score, max_score, source, status, reviewed) -> Any:
    if min_score is not None:
        stmt = stmt.where(Explanation.score >= min_score)
    if max_score is not None:
        stmt = stmt.where(Explanation.score <= max_score)
    if source is not None:
        stmt = stmt.where(FeatureSource.name == source)
    if status is not None and status not in STATUS_FILTERS:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUS_FILTERS)}")
    if status == UNLABELED:
        stmt = stmt.where(Explanation.id.is_(None))
    elif status in tuple(FeatureStatus):
        stmt = stmt.where(Feature.status == status)
    elif status is not None:
        stmt = stmt.where(Explanation.status == status)
    if reviewed is not None:
        has_review = select(Review.id).where(Review.feature_id == Feature.id).exists()
        stmt = stmt.where(has_review if reviewed else ~has_review)
    return stmt


def _parse_cursor(cursor: str) -> tuple[float | None, int]:
    score, _, feature_id = cursor.rpartition(":")
    try:
        value, number = (float(score) if score else None), int(feature_id)
    except ValueError:
        value, number = None, -1
    if not 0 <= number <= MAX_ID or (value is not None and not math.isfinite(value)):
        raise InputError(f"bad page cursor {cursor[:80]!r}: use FeatureRow.cursor")
    return value, number


def _after(stmt: Any, cursor: str | None, *, descending: bool) -> Any:
    """Keyset predicate for (score nulls last, feature id) order."""
    if cursor is None:
        return stmt
    score, feature_id = _parse_cursor(cursor)
    if score is None:
        return stmt.where(Explanation.score.is_(None), Feature.id > feature_id)
    beyond = Explanation.score < score if descending else Explanation.score > score
    return stmt.where(
        or_(
            beyond,
            (Explanation.score == score) & (Feature.id > feature_id),
            Explanation.score.is_(None),
        )
    )


# ---------------------------------------------------------------- export

# The columns of an export row before scores and reviews are added (EXPORT_FIELDS).
_EXPORT_COLUMNS = (
    Feature.id.label("feature_id"),
    FeatureSource.name.label("source"),
    Feature.index,
    Subject.name.label("subject"),
    Subject.revision.label("subject_revision"),
    FeatureSource.hook,
    FeatureSource.kind.label("source_kind"),
    Feature.status.label("feature_status"),
    Feature.max_act,
    Feature.mean_act,
    Feature.density,
    Feature.n_tokens,
    Explanation.id.label("explanation_id"),
    Explanation.text.label("label"),
    Explanation.status.label("label_status"),
    Explanation.author_kind,
    Explanation.author_name,
    Explanation.model,
    Explanation.prompt_name,
    Explanation.prompt_version,
    Explanation.prompt_hash,
    Explanation.parent_id,
    Explanation.run_id,
    Explanation.created_at.label("labeled_at"),
    Explanation.score,
)


def _export_batch(
    s: Session, last_id: int, source: str | None, batch_size: int
) -> list[dict[str, Any]]:
    """The next `batch_size` features after `last_id`, as export rows."""
    stmt = (
        select(*_EXPORT_COLUMNS)
        .join(FeatureSource, FeatureSource.id == Feature.source_id)
        .join(Subject, Subject.id == FeatureSource.subject_id)
        .outerjoin(
            Explanation,
            (Explanation.feature_id == Feature.id) & Explanation.status.in_(CURRENT_STATUSES),
        )
        .where(Feature.id > last_id)
        .order_by(Feature.id)
        .limit(batch_size)
    )
    if source is not None:
        stmt = stmt.where(FeatureSource.name == source)
    rows = [dict(row._mapping) for row in s.execute(stmt)]
    if not rows:
        return rows
    scores: dict[int, dict[str, float | None]] = {}
    for explanation_id, method, value in s.execute(
        select(Score.explanation_id, Score.method, Score.value)
        .where(Score.explanation_id.in_([r["explanation_id"] for r in rows]))
        .order_by(Score.id)
    ):
        scores.setdefault(explanation_id, {})[method] = value
    of_feature: dict[int, dict[str, float | None]] = {}
    effects: dict[int, dict[str, Any]] = {}
    for feature_id, method, value, details in s.execute(
        select(
            FeatureScore.feature_id,
            FeatureScore.method,
            FeatureScore.value,
            case((FeatureScore.method.in_(EFFECT_METHODS), FeatureScore.details)),
        )  # fmt: skip
        .where(FeatureScore.feature_id.in_([r["feature_id"] for r in rows]))
        .order_by(FeatureScore.id)
    ):
        of_feature.setdefault(feature_id, {})[method] = value
        if details is not None:
            effects.setdefault(feature_id, {})[method] = details
    reviewed = set(
        s.scalars(
            select(Review.feature_id)
            .where(Review.feature_id.in_([r["feature_id"] for r in rows]))
            .distinct()
        )
    )
    for row in rows:
        if row["labeled_at"] is not None:
            row["labeled_at"] = row["labeled_at"].isoformat()
        row["scores"] = scores.get(row["explanation_id"], {})
        row["feature_scores"] = of_feature.get(row["feature_id"], {})
        row["effects"] = effects.get(row["feature_id"], {})
        row["reviewed"] = row["feature_id"] in reviewed
    return rows


# ---------------------------------------------------------------- layer peaks

# A feature in a point's heap: (its peak there, -its id) orders them, strongest first.
_Entry = tuple[float, int, FeatureRow, dict[str, float]]


def _peaks_by_point(
    rows: Iterable[Any], top: int | None
) -> tuple[dict[str, list[_Entry]], dict[str, int]]:
    """Each point's heap of the (at most `top`) strongest features peaking there, and how
    many peak there in all. Rows are feature rows with the layer map last."""
    peaks: dict[str, list[_Entry]] = {}
    counts: dict[str, int] = {}
    for row in rows:
        layers = points_in_order(row[-1]) or {}
        for point in layers:
            peaks.setdefault(point, [])
        if not layers:
            continue
        point = max(layers, key=lambda p: layers[p])  # the first (shallowest) of ties
        if layers[point] <= 0:
            continue
        counts[point] = counts.get(point, 0) + 1
        entry = (layers[point], -row[0], _feature_row(row[:-1]), layers)
        heap = peaks[point]
        if top is None or len(heap) < top:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:
            heapq.heapreplace(heap, entry)
    return peaks, counts


def _no_layer_map(s: Session, source: SourceInfo) -> NoReturn:
    """Say why a source has no layer maps: nothing mined yet, or it reads one point."""
    mined = s.scalar(
        select(func.count())
        .select_from(Feature)
        .where(Feature.source_id == source.id, Feature.status.in_(MINED_STATUSES))
    )
    if not mined:
        raise NotFoundError(f"no feature of {source.name} is mined yet: run gloss mine first")
    raise InputError(
        f"{source.name} reads one hook point ({source.hook}): only a dictionary shared "
        "by several points has a layer map; mine one at a spec like layer.0-5.resid"
    )

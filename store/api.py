"""The typed store API: the only way the rest of gloss touches the database.

Open one with `open_store(url)`. Methods take and return plain dataclasses
and ids, never live ORM objects, so callers cannot hold a session by accident.
Every write method commits before it returns: a crash loses only what was in flight.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Float,
    Integer,
    bindparam,
    delete,
    false,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store import db
from store.errors import ConflictError, InputError, LockedError, NotFoundError
from store.models import (
    ACCEPTED,
    CANDIDATE,
    CURRENT_STATUSES,
    EXPLANATION_STATUSES,
    PROPOSED,
    REJECTED,
    REPLACE_ALL,
    REPLACE_MACHINE,
    REPLACE_NONE,
    RUN_STATUSES,
    SUPERSEDED,
    Claim,
    Example,
    Explanation,
    Feature,
    FeatureSource,
    LLMCall,
    Lock,
    Review,
    Run,
    Score,
    Subject,
    Window,
    utcnow,
)

# ---------------------------------------------------------------- value types


def encode_acts(values: Sequence[float]) -> bytes:
    """Per-token activations as little-endian float16 bytes (how `examples.acts` stores them)."""
    return struct.pack(f"<{len(values)}e", *values)


def decode_acts(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 2}e", data))


@dataclass(frozen=True)
class PromptRef:
    name: str
    version: str
    hash: str


@dataclass(frozen=True)
class WindowIn:
    doc_id: str
    offset: int
    token_ids: list[int]
    tokens: list[str]


@dataclass(frozen=True)
class ExampleIn:
    window_id: int
    split: str  # "explain" | "holdout"
    kind: str  # "top" | "quantile:Q" | "random"
    rank: int
    max_act: float
    acts: bytes  # encode_acts(...) or numpy .astype("<f2").tobytes()


@dataclass
class MinedFeature:
    index: int
    max_act: float
    mean_act: float
    density: float
    n_tokens: int
    histogram: dict[str, Any] | None
    examples: list[ExampleIn] = field(default_factory=list)
    # A dictionary shared by several hook points: {point: mean of top activations there}.
    layers: dict[str, float] | None = None


@dataclass(frozen=True)
class SourceInfo:
    id: int
    name: str
    subject_id: int
    subject_name: str
    subject_path: str
    hook: str
    kind: str
    width: int
    params_hash: str
    path: str | None
    config: dict[str, Any]


@dataclass(frozen=True)
class FeatureInfo:
    id: int
    source_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    mean_act: float | None
    density: float | None
    n_tokens: int | None
    histogram: dict[str, Any] | None
    failures: int
    last_error: str | None
    # {point: mean of top activations there}, shallowest point first; None for one point.
    layers: dict[str, float] | None = None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"


@dataclass(frozen=True)
class ExampleOut:
    window_id: int
    split: str
    kind: str
    rank: int
    max_act: float
    doc_id: str
    offset: int
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]


@dataclass(frozen=True)
class ScoreInfo:
    id: int
    method: str
    value: float | None
    details: dict[str, Any]
    simulator_model: str | None
    prompt_name: str | None
    prompt_version: str | None
    run_id: int | None
    created_at: Any


@dataclass(frozen=True)
class ExplanationInfo:
    id: int
    feature_id: int
    text: str
    author_kind: str
    author_name: str
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    prompt_hash: str | None
    parent_id: int | None
    status: str
    run_id: int | None
    score: float | None
    version: int
    details: dict[str, Any]
    created_at: Any
    scores: list[ScoreInfo] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureRow:
    """One line of a feature list or search result: the feature with its current label."""

    feature_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    density: float | None
    explanation_id: int | None
    label: str | None
    label_status: str | None
    author_kind: str | None
    score: float | None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"

    @property
    def cursor(self) -> str:
        """Pass as `Store.search(after=...)` to get the page after this row."""
        return f"{'' if self.score is None else repr(self.score)}:{self.feature_id}"


@dataclass(frozen=True)
class ReviewInfo:
    id: int
    feature_id: int
    explanation_id: int | None
    reviewer: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None
    created_at: Any


@dataclass(frozen=True)
class FeatureCard:
    feature: FeatureInfo
    source: SourceInfo
    current: ExplanationInfo | None
    history: list[ExplanationInfo]
    examples: list[ExampleOut]
    reviews: list[ReviewInfo]


@dataclass(frozen=True)
class LayerPeaks:
    """The features of a shared dictionary whose layer map peaks at one hook point."""

    point: str
    count: int  # all of them; `features` holds the strongest few
    features: list[tuple[FeatureRow, dict[str, float]]]  # with each one's layer map


@dataclass(frozen=True)
class RunInfo:
    id: int
    kind: str
    status: str
    config: dict[str, Any]
    counts: dict[str, Any]
    failures: list[Any]
    tokens_in: int
    tokens_out: int
    cost: float
    code_version: str
    message: str | None
    started_at: Any
    finished_at: Any
    parent_id: int | None = None
    holder: str | None = None
    heartbeat_at: Any = None


@dataclass(frozen=True)
class LockInfo:
    name: str
    holder: str
    run_id: int | None
    acquired_at: Any
    heartbeat_at: Any


REVIEW_ACTIONS = ("accept", "reject", "edit", "note")
SEARCH_ORDERS = ("rank", "score", "-score", "id")
_WORD = re.compile(r"\w+", re.UNICODE)


# ---------------------------------------------------------------- the store


def open_store(url: str | None = None) -> Store:
    """Open the database at `url` (default $GLOSS_DATABASE_URL or sqlite:///gloss.db)."""
    return Store(db.connect(url), db.resolve_url(url))


class Store:
    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back otherwise."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def serialized(self, feature_id: int | None = None) -> Iterator[Session]:
        """A write transaction for check-then-write: what it reads nobody changes until it ends.

        SQLite takes the database's write lock first (BEGIN IMMEDIATE; otherwise the
        transaction would begin only at its first write, after the check). PostgreSQL
        locks the feature's row, which every label write of that feature locks too.
        """
        with self.session() as s:
            if self.dialect == "sqlite":
                s.execute(text("BEGIN IMMEDIATE"))
            elif feature_id is not None:
                s.execute(select(Feature.id).where(Feature.id == feature_id).with_for_update())
            yield s

    def _insert(self, table):
        """INSERT ... ON CONFLICT DO NOTHING for this dialect."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    # ------------------------------------------------------------ registry

    def get_or_create_subject(
        self,
        name: str,
        path: str,
        revision: str,
        architecture: str,
        config: dict[str, Any] | None = None,
    ) -> int:
        stmt = self._insert(Subject).values(
            name=name,
            path=path,
            revision=revision,
            architecture=architecture,
            config=config or {},
            created_at=utcnow(),
        )
        with self.session() as s:
            s.execute(stmt.on_conflict_do_nothing(index_elements=["name", "revision"]))
            return s.scalar(select(Subject.id).filter_by(name=name, revision=revision))

    def get_or_create_source(
        self,
        subject_id: int,
        hook: str,
        kind: str,
        width: int,
        params_hash: str,
        *,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> int:
        """Register a feature source; the same subject, hook, kind and params reuse one row."""
        with self.session() as s:
            existing = s.scalar(
                select(FeatureSource).filter_by(
                    subject_id=subject_id, hook=hook, kind=kind, params_hash=params_hash
                )
            )
            if existing is not None:
                if existing.width != width:
                    raise InputError(
                        f"source {existing.name} has width {existing.width}, not {width}"
                    )
                return existing.id
            subject = s.get(Subject, subject_id)
            if subject is None:
                raise NotFoundError(f"no subject with id {subject_id}")
            if name is None:
                name = f"{subject.name}/{hook}/{kind}"
                if kind != "neurons":
                    name += f"-{params_hash[:8]}"
            source = FeatureSource(
                name=name,
                subject_id=subject_id,
                hook=hook,
                kind=kind,
                width=width,
                params_hash=params_hash,
                path=path,
                config=config or {},
            )
            s.add(source)
            s.flush()
            return source.id

    def sources(self) -> list[SourceInfo]:
        with self.session() as s:
            rows = s.execute(
                select(FeatureSource, Subject).join(Subject).order_by(FeatureSource.id)
            ).all()
            return [_source_info(src, subj) for src, subj in rows]

    def source(self, ref: int | str) -> SourceInfo:
        """A source by id or name."""
        with self.session() as s:
            query = select(FeatureSource, Subject).join(Subject)
            if isinstance(ref, int) or str(ref).isdigit():
                query = query.where(FeatureSource.id == int(ref))
            else:
                query = query.where(FeatureSource.name == ref)
            row = s.execute(query).first()
            if row is None:
                names = ", ".join(src.name for src in self.sources()) or "none yet: run gloss mine"
                raise NotFoundError(f"no feature source {ref!r}; known sources: {names}")
            return _source_info(*row)

    def subject_of(self, source_id: int) -> dict[str, Any]:
        with self.session() as s:
            subject = s.scalar(
                select(Subject).join(FeatureSource).where(FeatureSource.id == source_id)
            )
            return {
                "id": subject.id,
                "name": subject.name,
                "path": subject.path,
                "revision": subject.revision,
                "architecture": subject.architecture,
                "config": subject.config,
            }

    # ------------------------------------------------------------ mining writes

    def add_windows(self, subject_id: int, windows: Sequence[WindowIn]) -> list[int]:
        """Store windows once per subject (deduplicated by token content); ids in input order."""
        if not windows:
            return []
        hashes = [_window_hash(w.token_ids) for w in windows]
        rows = [
            {
                "subject_id": subject_id,
                "doc_id": w.doc_id,
                "offset": w.offset,
                "content_hash": h,
                "token_ids": list(w.token_ids),
                "tokens": list(w.tokens),
            }
            for w, h in zip(windows, hashes, strict=True)
        ]
        ids: dict[str, int] = {}
        with self.session() as s:
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                s.execute(
                    self._insert(Window).on_conflict_do_nothing(
                        index_elements=["subject_id", "content_hash"]
                    ),
                    chunk,
                )
                chunk_hashes = [r["content_hash"] for r in chunk]
                ids.update(
                    s.execute(
                        select(Window.content_hash, Window.id).where(
                            Window.subject_id == subject_id,
                            Window.content_hash.in_(chunk_hashes),
                        )
                    ).all()
                )
        return [ids[h] for h in hashes]

    def write_mined_features(
        self, source_id: int, features: Sequence[MinedFeature], run_id: int | None = None
    ) -> None:
        """Write statistics and examples for mined features in one transaction.

        Idempotent: a feature mined again has its old examples replaced, never doubled.
        A feature with max_act <= 0 is recorded as dead.
        """
        if not features:
            return
        indices = [f.index for f in features]
        with self.session() as s:
            s.execute(
                self._insert(Feature).on_conflict_do_nothing(index_elements=["source_id", "index"]),
                [
                    {"source_id": source_id, "index": i, "status": "new", "failures": 0}
                    for i in indices
                ],
            )
            id_of = dict(
                s.execute(
                    select(Feature.index, Feature.id).where(
                        Feature.source_id == source_id, _index_in(indices)
                    )
                ).all()
            )
            feature_ids = list(id_of.values())
            s.execute(
                delete(Example).where(
                    Example.feature_id.in_(
                        bindparam("ids", feature_ids, expanding=True, literal_execute=True)
                    )
                )
            )
            s.execute(
                update(Feature.__table__).where(Feature.id == bindparam("feature_id")),
                [
                    {
                        "feature_id": id_of[f.index],
                        "status": "mined" if f.max_act > 0 else "dead",
                        "max_act": f.max_act,
                        "mean_act": f.mean_act,
                        "density": f.density,
                        "n_tokens": f.n_tokens,
                        "histogram": f.histogram,
                        "layers": f.layers,
                        "mine_run_id": run_id,
                    }
                    for f in features
                ],
            )
            rows = [
                (id_of[f.index], e.window_id, e.split, e.kind, e.rank, e.max_act, e.acts)
                for f in features
                for e in f.examples
            ]
            if rows:
                self._bulk_insert_examples(s, rows)

    def _bulk_insert_examples(self, s: Session, rows: list[tuple]) -> None:
        """The hot path of mining: straight to the driver (COPY on PostgreSQL)."""
        columns = "feature_id, window_id, split, kind, rank, max_act, acts"
        cursor = s.connection().connection.driver_connection.cursor()
        if self.dialect == "postgresql":
            with cursor.copy(f"COPY examples ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(
                f"INSERT INTO examples ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )
        cursor.close()

    # ------------------------------------------------------------ features

    def feature_statuses(self, source_id: int) -> dict[int, str]:
        with self.session() as s:
            return dict(
                s.execute(
                    select(Feature.index, Feature.status).where(Feature.source_id == source_id)
                ).all()
            )

    def mining_runs(self, source_id: int) -> dict[int, int | None]:
        """Each mined (or dead) feature's index and the run that mined it."""
        with self.session() as s:
            return dict(
                s.execute(
                    select(Feature.index, Feature.mine_run_id).where(
                        Feature.source_id == source_id, Feature.status.in_(("mined", "dead"))
                    )
                ).all()
            )

    def resolve_feature(self, ref: int | str) -> int:
        """A feature id from an id (`42`) or `source-name:index` (`minilm/layer.3.mlp/neurons:7`)."""
        name, _, index = str(ref).rpartition(":")
        number = ref if isinstance(ref, int) else _whole_number(str(ref))
        if number is None and (not name or _whole_number(index) is None):
            raise InputError(
                f"bad feature reference {ref!r}: use a feature id (42) or "
                "SOURCE:INDEX (minilm/layer.3.mlp/neurons:7)"
            )
        feature_id = None
        with self.session() as s:
            if number is not None:
                if 0 <= number <= MAX_ID:
                    feature_id = s.scalar(select(Feature.id).where(Feature.id == number))
            elif _whole_number(index) <= MAX_INDEX:
                feature_id = s.scalar(
                    select(Feature.id)
                    .join(FeatureSource)
                    .where(FeatureSource.name == name, Feature.index == int(index))
                )
            if feature_id is None:
                raise NotFoundError(f"no feature {ref!r}: see gloss search or gloss export")
            return feature_id

    def feature(self, feature_id: int) -> FeatureInfo:
        _check_id(feature_id, "feature")
        with self.session() as s:
            row = s.execute(
                select(Feature, FeatureSource.name)
                .join(FeatureSource)
                .where(Feature.id == feature_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            return _feature_info(*row)

    def features(
        self,
        source_id: int | None = None,
        *,
        status: str | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[FeatureInfo]:
        query = select(Feature, FeatureSource.name).join(FeatureSource).order_by(Feature.id)
        if source_id is not None:
            query = query.where(Feature.source_id == source_id)
        if status is not None:
            query = query.where(Feature.status == status)
        if indices is not None:
            query = query.where(_index_in(indices))
        with self.session() as s:
            return [_feature_info(f, name) for f, name in s.execute(query).all()]

    def examples(self, feature_id: int, split: str | None = None) -> list[ExampleOut]:
        query = (
            select(Example, Window)
            .join(Window, Window.id == Example.window_id)
            .where(Example.feature_id == feature_id)
            .order_by(Example.split, Example.kind, Example.rank)
        )
        if split is not None:
            query = query.where(Example.split == split)
        with self.session() as s:
            return [
                ExampleOut(
                    window_id=w.id,
                    split=e.split,
                    kind=e.kind,
                    rank=e.rank,
                    max_act=e.max_act,
                    doc_id=w.doc_id,
                    offset=w.offset,
                    tokens=list(w.tokens),
                    token_ids=list(w.token_ids),
                    acts=decode_acts(e.acts),
                )
                for e, w in s.execute(query).all()
            ]

    def record_failure(self, feature_id: int, error: str) -> None:
        """Count a failed explain/score attempt so later runs retry only up to a limit."""
        with self.session() as s:
            s.execute(
                update(Feature)
                .where(Feature.id == feature_id)
                .values(failures=Feature.failures + 1, last_error=error[:2000])
            )

    def clear_failures(self, feature_id: int) -> None:
        with self.session() as s:
            s.execute(
                update(Feature).where(Feature.id == feature_id).values(failures=0, last_error=None)
            )

    # ------------------------------------------------------------ incremental work

    def features_to_explain(
        self,
        source_id: int | None,
        *,
        model: str,
        prompt: PromptRef,
        max_failures: int | None = None,
        relabel: bool = False,
        relabel_human: bool = False,
        indices: Sequence[int] | None = None,
        feature_ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[int]:
        """Mined features that need a label from this explainer model and prompt version.

        The one place that says what is left to explain. Pending: no current label, or a
        machine label from another model or prompt version. `relabel` adds features whose
        current label is this explainer's own; a label a human wrote or accepted is kept
        unless `relabel_human`. Features that failed `max_failures` times are left flagged.
        """
        current = Explanation.status.in_(CURRENT_STATUSES)
        protected = (Explanation.author_kind == "human") | (Explanation.status == ACCEPTED)
        own = (
            (Explanation.model == model)
            & (Explanation.prompt_name == prompt.name)
            & (Explanation.prompt_version == prompt.version)
        )
        if relabel_human:
            keep = false() if relabel else own
        else:
            keep = protected if relabel else or_(protected, own)
        labeled = (
            select(Explanation.id)
            .where(Explanation.feature_id == Feature.id, current, keep)
            .exists()
        )
        query = self._pending(source_id, max_failures, indices, feature_ids).where(~labeled)
        return self._ids(query, limit)

    def labels_to_score(
        self,
        source_id: int | None,
        *,
        simulator_model: str,
        prompt: PromptRef,
        method: str = "simulation",
        max_failures: int | None = None,
        rescore: bool = False,
        baseline: bool = False,
        indices: Sequence[int] | None = None,
        feature_ids: Sequence[int] | None = None,
    ) -> list[tuple[int, int, str]]:
        """(feature id, explanation id, text) of labels without a score from this simulator.

        The one place that says what is left to score: current labels (and with
        `baseline`, each feature's baseline label) that have no `method` score from this
        simulator model and prompt version; with `rescore`, all of them.
        """
        scored = (
            select(Score.id)
            .where(
                Score.explanation_id == Explanation.id,
                Score.method == method,
                Score.simulator_model == simulator_model,
                Score.prompt_name == prompt.name,
                Score.prompt_version == prompt.version,
            )
            .exists()
        )
        wanted = Explanation.status.in_(CURRENT_STATUSES)
        if baseline:
            wanted = or_(wanted, Explanation.author_kind == "baseline")
        query = (
            self._pending(source_id, max_failures, indices, feature_ids)
            .join(Explanation, Explanation.feature_id == Feature.id)
            .where(wanted)
            .add_columns(Explanation.id, Explanation.text)
            .order_by(Explanation.id)
        )
        if not rescore:
            query = query.where(~scored)
        with self.session() as s:
            return [tuple(row) for row in s.execute(query).all()]

    def features_to_score(
        self,
        source_id: int | None,
        *,
        simulator_model: str,
        prompt: PromptRef,
        max_failures: int | None = None,
        indices: Sequence[int] | None = None,
        feature_ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[int]:
        """Features whose current label has no simulation score from this model and prompt."""
        labels = self.labels_to_score(
            source_id,
            simulator_model=simulator_model,
            prompt=prompt,
            max_failures=max_failures,
            indices=indices,
            feature_ids=feature_ids,
        )
        ids = list(dict.fromkeys(feature_id for feature_id, _, _ in labels))
        return ids[:limit] if limit is not None else ids

    def _pending(
        self,
        source_id: int | None,
        max_failures: int | None,
        indices: Sequence[int] | None,
        feature_ids: Sequence[int] | None = None,
    ):
        query = select(Feature.id).where(Feature.status == "mined")
        if source_id is not None:
            query = query.where(Feature.source_id == source_id)
        if max_failures is not None:
            query = query.where(Feature.failures < max_failures)
        if indices is not None:
            query = query.where(_index_in(indices))
        if feature_ids is not None:
            query = query.where(
                Feature.id.in_(
                    bindparam("feature_ids", sorted(set(feature_ids)), expanding=True,
                              literal_execute=True)
                )
            )  # fmt: skip
        return query.order_by(Feature.source_id, Feature.index)

    def _ids(self, query, limit: int | None) -> list[int]:
        if limit is not None:
            query = query.limit(limit)
        with self.session() as s:
            return list(s.scalars(query).all())

    # ------------------------------------------------------------ explanations and scores

    def add_explanation(
        self,
        feature_id: int,
        text: str,
        *,
        author_kind: str,
        author_name: str,
        model: str | None = None,
        prompt: PromptRef | None = None,
        parent_id: int | None = None,
        run_id: int | None = None,
        details: dict[str, Any] | None = None,
        status: str = PROPOSED,
        replace: str = REPLACE_MACHINE,
    ) -> int:
        """Add a label. Status proposed/accepted asks for it to become the current label.

        Whether it does is decided here, in the transaction that writes it: it replaces
        the current label only as `replace` allows (REPLACE_NONE: only an unlabeled
        feature; REPLACE_MACHINE: also a model or baseline label nobody accepted;
        REPLACE_ALL: any). Otherwise it is kept as a candidate, so a label a human
        wrote or accepted meanwhile is never superseded by a machine.
        """
        text = _clean_text(text, "an explanation")
        if status not in EXPLANATION_STATUSES:
            raise InputError(f"unknown explanation status {status!r}")
        if replace not in (REPLACE_NONE, REPLACE_MACHINE, REPLACE_ALL):
            raise InputError(f"unknown replace policy {replace!r}")
        with self.serialized(feature_id) as s:
            if s.get(Feature, feature_id) is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            if status in CURRENT_STATUSES:
                current = _current(s, feature_id)
                if current is None or _may_replace(current, replace):
                    _supersede_current(s, feature_id)
                else:
                    status = CANDIDATE
            explanation = Explanation(
                feature_id=feature_id,
                text=text,
                author_kind=author_kind,
                author_name=author_name,
                model=model,
                prompt_name=prompt.name if prompt else None,
                prompt_version=prompt.version if prompt else None,
                prompt_hash=prompt.hash if prompt else None,
                parent_id=parent_id,
                status=status,
                run_id=run_id,
                details=details or {},
            )
            s.add(explanation)
            s.flush()
            return explanation.id

    def make_current(self, explanation_id: int, *, replace: str = REPLACE_MACHINE) -> bool:
        """Promote a candidate (the best of n, a baseline) to be the feature's current label.

        The same rule as `add_explanation`: the current label is replaced only as
        `replace` allows. Returns whether the explanation is current afterwards.
        """
        feature_id = self._feature_of(explanation_id)
        with self.serialized(feature_id) as s:
            explanation = s.get(Explanation, explanation_id)
            if explanation.status in CURRENT_STATUSES:
                return True
            current = _current(s, feature_id)
            if current is not None and not _may_replace(current, replace):
                return False
            _supersede_current(s, feature_id)
            explanation.status = PROPOSED
            explanation.version += 1
            return True

    def add_score(
        self,
        explanation_id: int,
        method: str,
        value: float | None,
        *,
        details: dict[str, Any] | None = None,
        simulator_model: str | None = None,
        prompt: PromptRef | None = None,
        run_id: int | None = None,
        replace: bool = False,
    ) -> int:
        """Record a score; NaN and infinities are refused (store None and say why in details).

        A label has at most one score per method, simulator model and prompt version
        (a unique index says so): another one raises ConflictError, unless `replace`,
        which swaps the old score for the new one in one transaction.
        """
        if value is not None and not math.isfinite(value):
            raise InputError(
                f"a score value must be a finite number, not {value!r}: "
                "store None with a reason in details"
            )
        key = (
            Score.explanation_id == explanation_id,
            Score.method == method,
            func.coalesce(Score.simulator_model, "") == (simulator_model or ""),
            func.coalesce(Score.prompt_name, "") == (prompt.name if prompt else ""),
            func.coalesce(Score.prompt_version, "") == (prompt.version if prompt else ""),
        )
        feature_id = self._feature_of(explanation_id)
        try:
            with self.serialized(feature_id) as s:
                old = s.scalar(select(Score.id).where(*key))
                if old is not None and not replace:
                    raise ConflictError(
                        f"label #{explanation_id} already has a {method} score from "
                        f"{simulator_model or 'no model'} with this prompt: pass replace=True "
                        "to score it again"
                    )
                if old is not None:
                    s.execute(delete(Score).where(Score.id == old))
                score = Score(
                    explanation_id=explanation_id,
                    method=method,
                    value=value,
                    details=details or {},
                    simulator_model=simulator_model,
                    prompt_name=prompt.name if prompt else None,
                    prompt_version=prompt.version if prompt else None,
                    prompt_hash=prompt.hash if prompt else None,
                    run_id=run_id,
                )
                s.add(score)
                s.flush()
                if method == "simulation":
                    _update_best_score(s, explanation_id)
                return score.id
        except IntegrityError:
            raise ConflictError(
                f"label #{explanation_id} was given the same {method} score by another process"
            ) from None

    def _feature_of(self, explanation_id: int) -> int:
        _check_id(explanation_id, "explanation")
        with self.session() as s:
            feature_id = s.scalar(
                select(Explanation.feature_id).where(Explanation.id == explanation_id)
            )
        if feature_id is None:
            raise NotFoundError(f"no explanation with id {explanation_id}")
        return feature_id

    def explanation(self, explanation_id: int) -> ExplanationInfo:
        _check_id(explanation_id, "explanation")
        with self.session() as s:
            explanation = s.get(Explanation, explanation_id)
            if explanation is None:
                raise NotFoundError(f"no explanation with id {explanation_id}")
            return _explanation_info(explanation, with_scores=True)

    def current_explanation(self, feature_id: int) -> ExplanationInfo | None:
        with self.session() as s:
            explanation = s.scalar(
                select(Explanation).where(
                    Explanation.feature_id == feature_id,
                    Explanation.status.in_(CURRENT_STATUSES),
                )
            )
            return _explanation_info(explanation, with_scores=True) if explanation else None

    def explanations(self, feature_id: int) -> list[ExplanationInfo]:
        """Every label a feature ever had, newest first, with scores."""
        with self.session() as s:
            rows = s.scalars(
                select(Explanation)
                .where(Explanation.feature_id == feature_id)
                .order_by(Explanation.created_at.desc(), Explanation.id.desc())
            ).all()
            return [_explanation_info(e, with_scores=True) for e in rows]

    # ------------------------------------------------------------ reviews

    def review(
        self,
        feature_id: int,
        action: str,
        reviewer: str,
        *,
        expected_explanation_id: int | None = None,
        expected_version: int | None = None,
        text: str | None = None,
        note: str | None = None,
    ) -> int | None:
        """Accept, reject or edit the current label, or leave a note; every action is audited.

        Pass the current label's id and version as the reviewer saw them: if
        somebody changed it since, ConflictError is raised and nothing is written.
        Returns the id of the explanation the action produced or touched.
        """
        if action not in REVIEW_ACTIONS:
            raise InputError(
                f"unknown review action {action!r}: use one of {', '.join(REVIEW_ACTIONS)}"
            )
        if not reviewer or not reviewer.strip():
            raise InputError("a review needs the reviewer's name")
        reviewer = _clean_text(reviewer, "a reviewer's name")
        if text and text.strip() and action == "edit":
            text = _clean_text(text, "a label")
        if note is not None:
            note = _clean_text(note, "a note", multiline=True) or None
        try:
            return self._review(
                feature_id, action, reviewer, expected_explanation_id, expected_version, text, note
            )
        except IntegrityError:
            raise ConflictError(
                "this feature's label changed while you saved yours; reload and try again"
            ) from None

    def _review(
        self,
        feature_id: int,
        action: str,
        reviewer: str,
        expected_explanation_id: int | None,
        expected_version: int | None,
        text: str | None,
        note: str | None,
    ) -> int | None:
        _check_id(feature_id, "feature")
        with self.serialized(feature_id) as s:
            if s.get(Feature, feature_id) is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            current = _current(s, feature_id)
            seen_id = current.id if current else None
            if expected_explanation_id is not None or expected_version is not None:
                if seen_id != expected_explanation_id or (
                    current is not None
                    and expected_version is not None
                    and current.version != expected_version
                ):
                    raise ConflictError(
                        "this feature's label changed since you loaded it "
                        f"(now: {current.text if current else 'no label'!r}); reload and try again"
                    )
            before = _snapshot(current)
            target_id = seen_id
            if action in ("accept", "reject"):
                if current is None:
                    raise InputError("this feature has no current label to " + action)
                current.status = ACCEPTED if action == "accept" else REJECTED
                current.version += 1
                after = _snapshot(current)
            elif action == "edit":
                if not text or not text.strip():
                    raise InputError("an edit needs the new label text")
                if current is not None:
                    current.status = SUPERSEDED
                    current.version += 1
                    s.flush()
                edited = Explanation(
                    feature_id=feature_id,
                    text=text,
                    author_kind="human",
                    author_name=reviewer,
                    parent_id=seen_id,
                    status=ACCEPTED,
                    details={"note": note} if note else {},
                )
                s.add(edited)
                s.flush()
                target_id = edited.id
                after = _snapshot(edited)
            else:
                after = before
            s.add(
                Review(
                    feature_id=feature_id,
                    explanation_id=target_id,
                    reviewer=reviewer,
                    action=action,
                    before=before,
                    after=after,
                    note=note,
                )
            )
            return target_id

    def reviews(self, feature_id: int | None = None, limit: int = 100) -> list[ReviewInfo]:
        query = select(Review).order_by(Review.id.desc()).limit(limit)
        if feature_id is not None:
            query = query.where(Review.feature_id == feature_id)
        with self.session() as s:
            return [_review_info(r) for r in s.scalars(query).all()]

    # ------------------------------------------------------------ queries

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
    ) -> list[FeatureRow]:
        """Features with their current labels, full-text ranked when `query` is given.

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

    def _page_of_hits(self, s: Session, hits, order, filters: tuple, limit: int, offset: int):
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
            "WHERE status IN ('proposed', 'accepted') AND score IS NOT NULL "
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

    def _text_hits(self, s: Session, words: list[str], k: int | None):
        """The first `k` current labels containing every word, as a subquery and its order.

        The order is (length, score DESC, id). A common word walks the rank index and
        stops after k matches; a rare one collects its matches and sorts them. Neither
        planner can tell which a word is (SQLite cannot estimate an FTS5 match;
        PostgreSQL assumes a word is spread evenly over label lengths, and walks for
        words it should not), so the number of matches decides, here.
        """
        params = self._match_params(words)
        walk = self._walk_rank_index(s, params, k)
        if self.dialect == "postgresql":
            order = "ORDER BY length, score DESC NULLS LAST, id"
            matching = (
                "SELECT explanation_id AS id, length, score "
                "FROM label_search, websearch_to_tsquery('english', :words) AS q "
                "WHERE search_vector @@ q"
            )
            sql = (
                f"{matching} {order}"
                if walk
                else f"WITH m AS MATERIALIZED ({matching}) SELECT * FROM m {order}"
            )
        elif walk:
            sql = (
                "SELECT id, length(text) AS length, score FROM explanations "
                "INDEXED BY ix_explanations_search_rank "
                f"WHERE status IN ('proposed', 'accepted') AND id IN ({self._matching_sql}) "
                "ORDER BY length(text), score DESC, id"
            )
        else:
            sql = (
                "SELECT e.id, length(e.text) AS length, e.score "
                f"FROM ({self._matching_sql}) AS m CROSS JOIN explanations AS e "
                "ON e.id = m.rowid WHERE e.status IN ('proposed', 'accepted') "
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
            text(f"SELECT count(*) FROM ({self._matching_sql} LIMIT {enough}) AS m"), params
        )
        return matches >= enough > 0

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

    def next_to_review(self, *, source: str | None = None, skip: int = 0) -> FeatureRow | None:
        """The review queue's head: a labeled, never-reviewed feature, lowest score first.

        Unscored labels come after scored ones; `skip` steps past features the
        reviewer passed over.
        """
        rows = self.search(
            source=source, status="proposed", reviewed=False, order="-score", limit=1, offset=skip
        )
        return rows[0] if rows else None

    def count(
        self,
        query: str = "",
        *,
        min_score: float | None = None,
        max_score: float | None = None,
        source: str | None = None,
        status: str | None = None,
        reviewed: bool | None = None,
    ) -> int:
        """How many features `search` would page through with these filters."""
        words = _WORD.findall(query or "")
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

    def _feature_rows(self, words: Sequence[str], *, labeled: bool = False):
        """Every feature with its current label, kept to labels containing all `words`."""
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
                (Explanation.feature_id == Feature.id) & Explanation.status.in_(CURRENT_STATUSES),
                isouter=not (labeled or words),
            )
        )
        if not words:
            return stmt
        matching = text(self._matching_sql).bindparams(**self._match_params(words))
        return stmt.where(Explanation.id.in_(matching.columns(id=Integer)))

    def current_labels(self, source_id: int) -> dict[int, FeatureRow]:
        """Every feature of a source that has a current label, by feature index."""
        stmt = self._feature_rows([], labeled=True).where(Feature.source_id == source_id)
        with self.session() as s:
            return {row.index: row for row in map(_feature_row, s.execute(stmt).all())}

    def layer_peaks(self, source: int | str, *, top: int | None = None) -> list[LayerPeaks]:
        """For each point of a shared dictionary (shallowest first), the features whose layer
        map peaks there, strongest peak first (at most `top`), with current labels and maps.

        Features that never fire are left out. The peak is read in Python, not SQL: JSON
        queries differ between the databases and every mined feature is read once anyway.
        """
        info = self.source(source)
        if top is not None and top < 1:
            raise InputError("--top must be at least 1")
        stmt = (
            self._feature_rows([])
            .add_columns(Feature.layers)
            .where(Feature.source_id == info.id, Feature.layers.is_not(None))
        )
        peaks: dict[str, list[tuple[float, int, FeatureRow, dict[str, float]]]] = {}
        counts: dict[str, int] = {}
        with self.session() as s:
            for row in s.execute(stmt).yield_per(1000):
                layers = _points_in_order(row[-1]) or {}
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
            if not peaks:
                mined = s.scalar(
                    select(func.count())
                    .select_from(Feature)
                    .where(Feature.source_id == info.id, Feature.status.in_(("mined", "dead")))
                )
                if not mined:
                    raise NotFoundError(
                        f"no feature of {info.name} is mined yet: run gloss mine first"
                    )
                raise InputError(
                    f"{info.name} reads one hook point ({info.hook}): only a dictionary shared "
                    "by several points has a layer map; mine one at a spec like layer.0-5.resid"
                )
        return [
            LayerPeaks(
                point,
                counts.get(point, 0),
                [(r, m) for *_, r, m in sorted(peaks[point], key=lambda e: e[:2], reverse=True)],
            )
            for point in _points_in_order(dict.fromkeys(peaks, 0.0)) or {}
        ]

    def export(
        self, *, source: str | None = None, batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every feature with its current label, scores and provenance, as flat dicts.

        Streams in batches of `batch_size` features by id (one short transaction
        per batch), so a million features never sit in memory at once. Keys are
        EXPORT_FIELDS; `scores` maps each method to its latest value for the label.
        """
        columns = (
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
        last_id = 0
        while True:
            stmt = (
                select(*columns)
                .join(FeatureSource, FeatureSource.id == Feature.source_id)
                .join(Subject, Subject.id == FeatureSource.subject_id)
                .outerjoin(
                    Explanation,
                    (Explanation.feature_id == Feature.id)
                    & Explanation.status.in_(CURRENT_STATUSES),
                )
                .where(Feature.id > last_id)
                .order_by(Feature.id)
                .limit(batch_size)
            )
            if source is not None:
                stmt = stmt.where(FeatureSource.name == source)
            with self.session() as s:
                rows = [dict(row._mapping) for row in s.execute(stmt)]
                if not rows:
                    return
                scores: dict[int, dict[str, float | None]] = {}
                for explanation_id, method, value in s.execute(
                    select(Score.explanation_id, Score.method, Score.value)
                    .where(Score.explanation_id.in_([r["explanation_id"] for r in rows]))
                    .order_by(Score.id)
                ):
                    scores.setdefault(explanation_id, {})[method] = value
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
                row["reviewed"] = row["feature_id"] in reviewed
                yield row
            last_id = rows[-1]["feature_id"]

    def feature_card(self, feature: int | str) -> FeatureCard:
        """Everything about one feature: statistics, labels with scores, examples, reviews."""
        feature_id = self.resolve_feature(feature)
        info = self.feature(feature_id)
        history = self.explanations(feature_id)
        current = next((e for e in history if e.status in CURRENT_STATUSES), None)
        return FeatureCard(
            feature=info,
            source=self.source(info.source_id),
            current=current,
            history=history,
            examples=self.examples(feature_id),
            reviews=self.reviews(feature_id),
        )

    # ------------------------------------------------------------ runs

    def start_run(
        self,
        kind: str,
        config: dict[str, Any],
        code_version: str = "",
        *,
        parent_id: int | None = None,
        holder: str | None = None,
    ) -> int:
        """A new run in status running; `holder` (host:pid) lets a dead process's run be found."""
        now = utcnow()
        with self.session() as s:
            run = Run(
                kind=kind,
                config=config,
                code_version=code_version,
                counts={},
                failures=[],
                parent_id=parent_id,
                holder=holder,
                started_at=now,
                heartbeat_at=now,
            )
            s.add(run)
            s.flush()
            return run.id

    def update_run(self, run_id: int, **values: Any) -> None:
        """Set run columns (counts, failures, tokens_in, tokens_out, cost, status, message)."""
        if "status" in values and values["status"] not in RUN_STATUSES:
            raise InputError(
                f"unknown run status {values['status']!r}: use one of {', '.join(RUN_STATUSES)}"
            )
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def finish_run(
        self, run_id: int, status: str, message: str | None = None, **values: Any
    ) -> None:
        self.update_run(run_id, status=status, message=message, finished_at=utcnow(), **values)

    def running_runs(self) -> list[RunInfo]:
        """Runs still marked running, oldest first: live ones, and any whose process died."""
        with self.session() as s:
            return [
                _run_info(r)
                for r in s.scalars(select(Run).where(Run.status == "running").order_by(Run.id))
            ]

    def heartbeat(self, holder: str, lease_s: float) -> None:
        """This process is alive: its lock, its running runs and its claims stay fresh."""
        now = utcnow()
        with self.session() as s:
            s.execute(update(Lock).where(Lock.holder == holder).values(heartbeat_at=now))
            s.execute(
                update(Run)
                .where(Run.holder == holder, Run.status == "running")
                .values(heartbeat_at=now)
            )
            s.execute(
                update(Claim)
                .where(Claim.holder == holder)
                .values(expires_at=now + timedelta(seconds=lease_s))
            )

    def run(self, run_id: int) -> RunInfo:
        _check_id(run_id, "run")
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id}")
            return _run_info(run)

    def runs(self, limit: int = 20) -> list[RunInfo]:
        with self.session() as s:
            return [
                _run_info(r) for r in s.scalars(select(Run).order_by(Run.id.desc()).limit(limit))
            ]

    # ------------------------------------------------------------ locks

    def acquire_lock(
        self, name: str, holder: str, *, run_id: int | None = None, stale_after_s: float = 600
    ) -> None:
        """Take a named lock, or raise LockedError naming who holds it.

        A lock whose heartbeat is older than `stale_after_s` is taken over.
        """
        now = utcnow()
        with self.session() as s:
            s.execute(
                delete(Lock).where(
                    Lock.name == name, Lock.heartbeat_at < now - timedelta(seconds=stale_after_s)
                )
            )
        try:
            with self.session() as s:
                s.add(
                    Lock(name=name, holder=holder, run_id=run_id, acquired_at=now, heartbeat_at=now)
                )
        except IntegrityError:
            with self.session() as s:
                lock = s.get(Lock, name)
            if lock is None:
                return self.acquire_lock(name, holder, run_id=run_id, stale_after_s=stale_after_s)
            raise LockedError(
                f"another gloss run holds the {name!r} lock ({lock.holder}, run {lock.run_id}, "
                f"since {lock.acquired_at:%Y-%m-%d %H:%M:%S} UTC); wait for it, or if it died, "
                f"the lock expires {stale_after_s:.0f}s after its last heartbeat"
            ) from None

    def lock(self, name: str) -> LockInfo | None:
        with self.session() as s:
            lock = s.get(Lock, name)
            if lock is None:
                return None
            return LockInfo(
                lock.name, lock.holder, lock.run_id, lock.acquired_at, lock.heartbeat_at
            )

    def set_lock_run(self, name: str, holder: str, run_id: int) -> None:
        with self.session() as s:
            s.execute(
                update(Lock).where(Lock.name == name, Lock.holder == holder).values(run_id=run_id)
            )

    def release_lock(self, name: str, holder: str) -> None:
        with self.session() as s:
            s.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))

    # ------------------------------------------------------------ claims

    def claim(
        self,
        feature_id: int,
        stage: str,
        holder: str,
        *,
        run_id: int | None = None,
        lease_s: float = 300.0,
    ) -> bool:
        """Claim a feature for a stage before paying for its LLM work.

        False when another holder's claim has not expired; the holder keeps it fresh
        with `heartbeat` and ends it with `release`.
        """
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        with self.serialized(feature_id) as s:
            claim = s.get(Claim, (feature_id, stage))
            if claim is None:
                s.add(
                    Claim(
                        feature_id=feature_id,
                        stage=stage,
                        holder=holder,
                        run_id=run_id,
                        expires_at=expires,
                    )
                )
                return True
            if claim.holder != holder and claim.expires_at > now:
                return False
            claim.holder, claim.run_id, claim.expires_at = holder, run_id, expires
            return True

    def release(self, feature_id: int, stage: str, holder: str) -> None:
        with self.session() as s:
            s.execute(
                delete(Claim).where(
                    Claim.feature_id == feature_id, Claim.stage == stage, Claim.holder == holder
                )
            )

    def claim_holders(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Claim.holder).distinct()))

    def drop_claims(self, holder: str) -> int:
        """Release every claim of a holder whose process is known to be dead."""
        with self.session() as s:
            return s.execute(delete(Claim).where(Claim.holder == holder)).rowcount

    # ------------------------------------------------------------ LLM calls

    def cached_llm_response(self, request_hash: str) -> dict[str, Any] | None:
        """The response of an earlier successful, cacheable call with this request hash."""
        with self.session() as s:
            return s.scalar(
                select(LLMCall.response)
                .where(
                    LLMCall.request_hash == request_hash,
                    LLMCall.outcome == "ok",
                    LLMCall.cacheable.is_(True),
                )
                .order_by(LLMCall.id.desc())
                .limit(1)
            )

    def record_llm_call(
        self,
        *,
        request_hash: str,
        role: str,
        model: str,
        outcome: str,
        endpoint: str = "",
        cacheable: bool = True,
        error: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: float = 0.0,
        latency_s: float = 0.0,
        run_id: int | None = None,
    ) -> int:
        """Keep a call in the ledger whatever it answered: NUL characters and non-finite
        numbers (which PostgreSQL's text and JSON cannot hold) are stored as readable
        stand-ins, so a garbage answer is recorded instead of failing the write."""
        with self.session() as s:
            call = LLMCall(
                request_hash=request_hash,
                role=role,
                model=model,
                endpoint=endpoint,
                cacheable=cacheable,
                outcome=outcome,
                error=_storable(error),
                request=_storable(request),
                response=_storable(response),
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost=cost,
                latency_s=latency_s,
                run_id=run_id,
            )
            s.add(call)
            s.flush()
            return call.id


# ---------------------------------------------------------------- helpers


def _index_in(indices: Sequence[int]):
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


def _window_hash(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(token_ids)}q", *token_ids)).hexdigest()


def _storable(value: Any) -> Any:
    """`value` with NUL characters replaced (U+FFFD) and NaN/infinities as strings."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _current(s: Session, feature_id: int) -> Explanation | None:
    return s.scalar(
        select(Explanation).where(
            Explanation.feature_id == feature_id, Explanation.status.in_(CURRENT_STATUSES)
        )
    )


def _may_replace(current: Explanation, replace: str) -> bool:
    """The one rule: a label a human wrote or accepted is replaced only by REPLACE_ALL."""
    if replace == REPLACE_ALL:
        return True
    if replace == REPLACE_NONE:
        return False
    return current.author_kind != "human" and current.status != ACCEPTED


def _update_best_score(s: Session, explanation_id: int) -> None:
    best = (
        select(func.max(Score.value))
        .where(Score.explanation_id == explanation_id, Score.method == "simulation")
        .scalar_subquery()
    )
    s.execute(update(Explanation).where(Explanation.id == explanation_id).values(score=best))


MAX_ID = 2**31 - 1  # ids are 32-bit integer columns (PostgreSQL); SQLite takes more, none need it
MAX_INDEX = 2**31 - 1  # feature indices are 32-bit
MAX_OFFSET = 2**31  # deeper than any list anyone pages through; keeps LIMIT arithmetic in range
MAX_LIMIT = 10_000


def _whole_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_id(value: int, what: str) -> None:
    if not 0 <= value <= MAX_ID:
        raise NotFoundError(f"no {what} with id {value}")


def _clean_text(value: str, what: str, *, multiline: bool = False) -> str:
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


def _supersede_current(s: Session, feature_id: int) -> None:
    s.execute(
        update(Explanation)
        .where(Explanation.feature_id == feature_id, Explanation.status.in_(CURRENT_STATUSES))
        .values(status=SUPERSEDED, version=Explanation.version + 1)
    )
    s.flush()


def _filter_rows(stmt, min_score, max_score, source, status, reviewed):
    if min_score is not None:
        stmt = stmt.where(Explanation.score >= min_score)
    if max_score is not None:
        stmt = stmt.where(Explanation.score <= max_score)
    if source is not None:
        stmt = stmt.where(FeatureSource.name == source)
    if status == "unlabeled":
        stmt = stmt.where(Explanation.id.is_(None))
    elif status in ("new", "mined", "dead"):
        stmt = stmt.where(Feature.status == status)
    elif status is not None:
        stmt = stmt.where(Explanation.status == status)
    if reviewed is not None:
        has_review = select(Review.id).where(Review.feature_id == Feature.id).exists()
        stmt = stmt.where(has_review if reviewed else ~has_review)
    return stmt


EXPORT_FIELDS = (
    "feature_id",
    "source",
    "index",
    "subject",
    "subject_revision",
    "hook",
    "source_kind",
    "feature_status",
    "max_act",
    "mean_act",
    "density",
    "n_tokens",
    "explanation_id",
    "label",
    "label_status",
    "author_kind",
    "author_name",
    "model",
    "prompt_name",
    "prompt_version",
    "prompt_hash",
    "parent_id",
    "run_id",
    "labeled_at",
    "score",
    "scores",
    "reviewed",
)


def _parse_cursor(cursor: str) -> tuple[float | None, int]:
    score, _, feature_id = cursor.rpartition(":")
    try:
        value, number = (float(score) if score else None), int(feature_id)
    except ValueError:
        value, number = None, -1
    if not 0 <= number <= MAX_ID or (value is not None and not math.isfinite(value)):
        raise InputError(f"bad page cursor {cursor[:80]!r}: use FeatureRow.cursor")
    return value, number


def _after(stmt, cursor: str | None, *, descending: bool):
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


def _snapshot(explanation: Explanation | None) -> dict[str, Any] | None:
    if explanation is None:
        return None
    return {
        "explanation_id": explanation.id,
        "text": explanation.text,
        "status": explanation.status,
        "author_kind": explanation.author_kind,
        "author_name": explanation.author_name,
    }


def _source_info(src: FeatureSource, subj: Subject) -> SourceInfo:
    return SourceInfo(
        id=src.id,
        name=src.name,
        subject_id=subj.id,
        subject_name=subj.name,
        subject_path=subj.path,
        hook=src.hook,
        kind=src.kind,
        width=src.width,
        params_hash=src.params_hash,
        path=src.path,
        config=dict(src.config or {}),
    )


def _feature_info(f: Feature, source_name: str) -> FeatureInfo:
    return FeatureInfo(
        id=f.id,
        source_id=f.source_id,
        source=source_name,
        index=f.index,
        status=f.status,
        max_act=f.max_act,
        mean_act=f.mean_act,
        density=f.density,
        n_tokens=f.n_tokens,
        histogram=f.histogram,
        failures=f.failures,
        last_error=f.last_error,
        layers=_points_in_order(f.layers),
    )


def _points_in_order(layers: dict[str, float] | None) -> dict[str, float] | None:
    """Shallowest point first: PostgreSQL's JSONB keeps keys in its own order, not ours."""
    if layers is None:
        return None

    def key(point: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", point)]

    return {point: layers[point] for point in sorted(layers, key=key)}


def _feature_row(row) -> FeatureRow:
    return FeatureRow(*row)


def _fts_match(words: Sequence[str]) -> str:
    """An FTS5 query that requires every word, each quoted so no word is syntax."""
    return " ".join(f'"{w}"' for w in words)


def _score_info(sc: Score) -> ScoreInfo:
    return ScoreInfo(
        id=sc.id,
        method=sc.method,
        value=sc.value,
        details=dict(sc.details or {}),
        simulator_model=sc.simulator_model,
        prompt_name=sc.prompt_name,
        prompt_version=sc.prompt_version,
        run_id=sc.run_id,
        created_at=sc.created_at,
    )


def _explanation_info(e: Explanation, with_scores: bool = False) -> ExplanationInfo:
    return ExplanationInfo(
        id=e.id,
        feature_id=e.feature_id,
        text=e.text,
        author_kind=e.author_kind,
        author_name=e.author_name,
        model=e.model,
        prompt_name=e.prompt_name,
        prompt_version=e.prompt_version,
        prompt_hash=e.prompt_hash,
        parent_id=e.parent_id,
        status=e.status,
        run_id=e.run_id,
        score=e.score,
        version=e.version,
        details=dict(e.details or {}),
        created_at=e.created_at,
        scores=[_score_info(sc) for sc in sorted(e.scores, key=lambda x: x.id)]
        if with_scores
        else [],
    )


def _review_info(r: Review) -> ReviewInfo:
    return ReviewInfo(
        id=r.id,
        feature_id=r.feature_id,
        explanation_id=r.explanation_id,
        reviewer=r.reviewer,
        action=r.action,
        before=r.before,
        after=r.after,
        note=r.note,
        created_at=r.created_at,
    )


def _run_info(r: Run) -> RunInfo:
    return RunInfo(
        id=r.id,
        kind=r.kind,
        status=r.status,
        config=dict(r.config or {}),
        counts=dict(r.counts or {}),
        failures=list(r.failures or []),
        tokens_in=r.tokens_in,
        tokens_out=r.tokens_out,
        cost=r.cost,
        code_version=r.code_version,
        message=r.message,
        started_at=r.started_at,
        finished_at=r.finished_at,
        parent_id=r.parent_id,
        holder=r.holder,
        heartbeat_at=r.heartbeat_at,
    )


__all__ = [
    "CANDIDATE",
    "PROPOSED",
    "REPLACE_ALL",
    "REPLACE_MACHINE",
    "REPLACE_NONE",
    "EXPORT_FIELDS",
    "ExampleIn",
    "ExampleOut",
    "ExplanationInfo",
    "FeatureCard",
    "FeatureInfo",
    "FeatureRow",
    "LockInfo",
    "MinedFeature",
    "PromptRef",
    "ReviewInfo",
    "RunInfo",
    "ScoreInfo",
    "SourceInfo",
    "Store",
    "WindowIn",
    "decode_acts",
    "encode_acts",
    "open_store",
]

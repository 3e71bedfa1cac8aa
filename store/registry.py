"""The registry: subjects (models), their feature sources, and the features themselves.

Everything else in the store hangs off these rows. A subject is a model name plus
revision; a source is a hook point of a subject read directly (neurons) or through an
encoder; a feature is one index of a source. Features are found by id or by
`SOURCE:INDEX`, the reference users type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gloss.store.base import MAX_ID, MAX_INDEX, StoreBase, check_id, index_in, whole_number
from gloss.store.errors import InputError, NotFoundError
from gloss.store.models import Feature, FeatureSource, Subject, utcnow
from gloss.store.types import FeatureInfo, SourceInfo, points_in_order


class Registry(StoreBase):
    # ------------------------------------------------------------ subjects and sources

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
            return s.execute(
                select(Subject.id).filter_by(name=name, revision=revision)
            ).scalar_one()

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
        """Register a feature source; the same subject, hook, kind and params reuse one row.

        Two processes registering it at once both find no row; the second one's insert
        then fails on the unique key, and it reads the row the first one wrote.
        """
        for attempt in range(2):
            try:
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
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def sources(self) -> list[SourceInfo]:
        with self.session() as s:
            return all_sources(s)

    def source(self, ref: int | str) -> SourceInfo:
        """A source by id or name."""
        with self.session() as s:
            return find_source(s, ref)

    def subject_of(self, source_id: int) -> dict[str, Any]:
        with self.session() as s:
            subject = s.scalar(
                select(Subject).join(FeatureSource).where(FeatureSource.id == source_id)
            )
            if subject is None:
                raise NotFoundError(f"no feature source with id {source_id}")
            return {
                "id": subject.id,
                "name": subject.name,
                "path": subject.path,
                "revision": subject.revision,
                "architecture": subject.architecture,
                "config": subject.config,
            }

    # ------------------------------------------------------------ features

    def resolve_feature(self, ref: int | str) -> int:
        """A feature id from an id (`42`) or `source-name:index` (`minilm/layer.3.mlp/neurons:7`)."""
        name, _, index = str(ref).rpartition(":")
        number = ref if isinstance(ref, int) else whole_number(str(ref))
        if number is None and (not name or whole_number(index) is None):
            raise InputError(
                f"bad feature reference {ref!r}: use a feature id (42) or "
                "SOURCE:INDEX (minilm/layer.3.mlp/neurons:7)"
            )
        feature_id = None
        with self.session() as s:
            if number is not None:
                if 0 <= number <= MAX_ID:
                    feature_id = s.scalar(select(Feature.id).where(Feature.id == number))
            elif int(index) <= MAX_INDEX:
                feature_id = s.scalar(
                    select(Feature.id)
                    .join(FeatureSource)
                    .where(FeatureSource.name == name, Feature.index == int(index))
                )
            if feature_id is None:
                raise NotFoundError(f"no feature {ref!r}: see gloss search or gloss export")
            return feature_id

    def feature(self, feature_id: int) -> FeatureInfo:
        check_id(feature_id, "feature")
        with self.session() as s:
            row = s.execute(
                select(Feature, FeatureSource.name)
                .join(FeatureSource)
                .where(Feature.id == feature_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            return feature_info(*row)

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
            query = query.where(index_in(indices))
        with self.session() as s:
            return [feature_info(f, name) for f, name in s.execute(query).all()]


# ---------------------------------------------------------------- reading rows


def all_sources(s: Session) -> list[SourceInfo]:
    rows = s.execute(select(FeatureSource, Subject).join(Subject).order_by(FeatureSource.id))
    return [source_info(src, subj) for src, subj in rows.all()]


def find_source(s: Session, ref: int | str) -> SourceInfo:
    """A source by id or name, or NotFoundError naming the sources there are."""
    query = select(FeatureSource, Subject).join(Subject)
    if isinstance(ref, int) or str(ref).isdigit():
        query = query.where(FeatureSource.id == int(ref))
    else:
        query = query.where(FeatureSource.name == ref)
    row = s.execute(query).first()
    if row is None:
        names = ", ".join(src.name for src in all_sources(s)) or "none yet: run gloss mine"
        raise NotFoundError(f"no feature source {ref!r}; known sources: {names}")
    return source_info(*row)


def source_info(src: FeatureSource, subj: Subject) -> SourceInfo:
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


def feature_info(f: Feature, source_name: str) -> FeatureInfo:
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
        layers=points_in_order(f.layers),
    )

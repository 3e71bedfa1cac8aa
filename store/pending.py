"""Pending work: the one place that says what is left to explain and to score.

Every stage does only the work the database says is missing, so a rerun resumes
where the last one stopped and two workers never disagree about what is done. A
feature whose explain or score attempts failed too often (`record_failure`) is left
flagged instead of being retried forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, false, func, or_, select, update

from gloss.store.base import StoreBase, index_in
from gloss.store.models import Explanation, Feature, FeatureScore, Score
from gloss.store.statuses import CURRENT_STATUSES, AuthorKind, ExplanationStatus, FeatureStatus
from gloss.store.types import PromptRef


class Pending(StoreBase):
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

        Pending: no current label, or a machine label from another model or prompt
        version. `relabel` adds features whose current label is this explainer's own; a
        label a human wrote or accepted is kept unless `relabel_human`. Features that
        failed `max_failures` times are left flagged.
        """
        current = Explanation.status.in_(CURRENT_STATUSES)
        protected = (Explanation.author_kind == AuthorKind.HUMAN) | (
            Explanation.status == ExplanationStatus.ACCEPTED
        )
        own = (
            (Explanation.model == model)
            & (Explanation.prompt_name == prompt.name)
            & (Explanation.prompt_version == prompt.version)
        )
        keep: ColumnElement[bool]
        if relabel_human:
            keep = false() if relabel else own
        else:
            keep = protected if relabel else or_(protected, own)
        labeled = (
            select(Explanation.id)
            .where(Explanation.feature_id == Feature.id, current, keep)
            .exists()
        )
        query = _pending(source_id, max_failures, indices, feature_ids).where(~labeled)
        if limit is not None:
            query = query.limit(limit)
        with self.session() as s:
            return list(s.scalars(query).all())

    def labels_to_score(
        self,
        source_id: int | None,
        *,
        simulator_model: str | None,
        prompt: PromptRef | None,
        method: str = "simulation",
        max_failures: int | None = None,
        rescore: bool = False,
        baseline: bool = False,
        indices: Sequence[int] | None = None,
        feature_ids: Sequence[int] | None = None,
    ) -> list[tuple[int, int, str]]:
        """(feature id, explanation id, text) of labels without this scorer's score.

        Current labels (and with `baseline`, each feature's baseline label) that have
        no `method` score from this model and prompt version (None: a scorer without
        a model or a prompt); with `rescore`, all of them.
        """
        scored = (
            select(Score.id)
            .where(
                Score.explanation_id == Explanation.id,
                Score.method == method,
                func.coalesce(Score.simulator_model, "") == (simulator_model or ""),
                func.coalesce(Score.prompt_name, "") == (prompt.name if prompt else ""),
                func.coalesce(Score.prompt_version, "") == (prompt.version if prompt else ""),
            )
            .exists()
        )
        wanted: ColumnElement[bool] = Explanation.status.in_(CURRENT_STATUSES)
        if baseline:
            wanted = or_(wanted, Explanation.author_kind == AuthorKind.BASELINE)
        query = (
            _pending(source_id, max_failures, indices, feature_ids)
            .join(Explanation, Explanation.feature_id == Feature.id)
            .where(wanted)
            .add_columns(Explanation.id, Explanation.text)
            .order_by(Explanation.id)
        )
        if not rescore:
            query = query.where(~scored)
        with self.session() as s:
            return [tuple(row) for row in s.execute(query).all()]

    def features_to_judge(
        self,
        source_id: int | None,
        *,
        method: str,
        model: str | None,
        prompt: PromptRef | None,
        max_failures: int | None = None,
        rescore: bool = False,
        indices: Sequence[int] | None = None,
        feature_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Mined features without this feature scorer's score (intruder detection)."""
        query = _pending(source_id, max_failures, indices, feature_ids)
        if not rescore:
            judged = (
                select(FeatureScore.id)
                .where(
                    FeatureScore.feature_id == Feature.id,
                    FeatureScore.method == method,
                    func.coalesce(FeatureScore.model, "") == (model or ""),
                    func.coalesce(FeatureScore.prompt_name, "") == (prompt.name if prompt else ""),
                    func.coalesce(FeatureScore.prompt_version, "")
                    == (prompt.version if prompt else ""),
                )
                .exists()
            )
            query = query.where(~judged)
        with self.session() as s:
            return list(s.scalars(query).all())

    # ------------------------------------------------------------ failures

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


def _pending(
    source_id: int | None,
    max_failures: int | None,
    indices: Sequence[int] | None,
    feature_ids: Sequence[int] | None = None,
) -> Any:
    """Mined features, in source and index order, kept to the ones asked for."""
    query = select(Feature.id).where(Feature.status == FeatureStatus.MINED)
    if source_id is not None:
        query = query.where(Feature.source_id == source_id)
    if max_failures is not None:
        query = query.where(Feature.failures < max_failures)
    if indices is not None:
        query = query.where(index_in(indices))
    if feature_ids is not None:
        wanted = sorted(set(feature_ids))
        query = query.where(
            Feature.id.in_(bindparam("feature_ids", wanted, expanding=True, literal_execute=True))
        )
    return query.order_by(Feature.source_id, Feature.index)

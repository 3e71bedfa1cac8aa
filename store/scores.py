"""Scores: how well a label predicts its feature, and measures of the feature itself.

A label has at most one score per method, model and prompt version (`scores`); a
feature at most one per method, model and prompt version of its own (`feature_scores`,
e.g. intruder detection, which needs no label). Each score keeps the LLM calls and
tokens it cost. One method is primary (`settings.primary_score_method`, simulation
unless changed): a label's best score of that method is copied to `explanations.score`,
which search, sorting and the review queue read.
"""

from __future__ import annotations

import math
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase, check_id
from gloss.store.errors import ConflictError, InputError
from gloss.store.models import Explanation, FeatureScore, Score, Setting
from gloss.store.types import PromptRef, ScoreInfo

PRIMARY_KEY = "primary_score_method"
DEFAULT_PRIMARY = "simulation"


class Scores(StoreBase):
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
        calls: int = 0,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> int:
        """Record a label's score; NaN and infinities are refused (store None and say why).

        A label has at most one score per method, simulator model and prompt version
        (a unique index says so): another one raises ConflictError, unless `replace`,
        which swaps the old score for the new one in one transaction.
        """
        check_value(value)
        feature_id = self._feature_of(explanation_id)
        try:
            with self.serialized(feature_id) as s:
                score_id = _put(
                    s, Score, {"explanation_id": explanation_id}, f"label #{explanation_id}",
                    method, value, "simulator_model", simulator_model, prompt, replace,
                    details=details or {}, run_id=run_id, calls=calls, tokens_in=tokens_in,
                    tokens_out=tokens_out,
                )  # fmt: skip
                if method == primary_method(s):
                    s.execute(
                        update(Explanation)
                        .where(Explanation.id == explanation_id)
                        .values(score=_best(method, Explanation.id))
                    )
                return score_id
        except IntegrityError:
            raise ConflictError(
                f"label #{explanation_id} was given the same {method} score by another process"
            ) from None

    def add_feature_score(
        self,
        feature_id: int,
        method: str,
        value: float | None,
        *,
        details: dict[str, Any] | None = None,
        model: str | None = None,
        prompt: PromptRef | None = None,
        run_id: int | None = None,
        replace: bool = False,
        calls: int = 0,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> int:
        """Record a measure of the feature itself (intruder detection); rules as `add_score`."""
        check_value(value)
        check_id(feature_id, "feature")
        try:
            with self.serialized(feature_id) as s:
                return _put(
                    s, FeatureScore, {"feature_id": feature_id}, f"feature {feature_id}",
                    method, value, "model", model, prompt, replace, details=details or {},
                    run_id=run_id, calls=calls, tokens_in=tokens_in, tokens_out=tokens_out,
                )  # fmt: skip
        except IntegrityError:
            raise ConflictError(
                f"feature {feature_id} was given the same {method} score by another process"
            ) from None

    def feature_scores(self, feature_id: int) -> list[ScoreInfo]:
        with self.session() as s:
            rows = s.scalars(
                select(FeatureScore)
                .where(FeatureScore.feature_id == feature_id)
                .order_by(FeatureScore.id)
            )
            return [score_info(row) for row in rows]

    # ------------------------------------------------------------ the primary method

    def primary_score_method(self) -> str:
        """The score method behind `explanations.score` (what search and sorting use)."""
        with self.session() as s:
            return primary_method(s)

    def set_primary_score_method(self, method: str) -> int:
        """Make `method` rank labels: every label's `score` becomes its best of that method
        (NULL where it has none). Returns how many labels changed."""
        method = method.strip()
        if not method:
            raise InputError("the primary score method needs a name, e.g. simulation")
        with self.serialized() as s:
            setting = s.get(Setting, PRIMARY_KEY)
            if setting is None:
                s.add(Setting(key=PRIMARY_KEY, value=method))
            else:
                setting.value = method
            result = s.execute(update(Explanation).values(score=_best(method, Explanation.id)))
            return cast("CursorResult[Any]", result).rowcount


def _put(
    s: Session,
    table: type[Score] | type[FeatureScore],
    owner: dict[str, int],
    what: str,
    method: str,
    value: float | None,
    model_column: str,
    model: str | None,
    prompt: PromptRef | None,
    replace: bool,
    **columns: Any,
) -> int:
    """Write the one score of `owner` (a label or a feature) for this method, model and
    prompt version: ConflictError if there is one, unless `replace`. Returns its id."""
    key = [getattr(table, column) == id_ for column, id_ in owner.items()] + [
        table.method == method,
        func.coalesce(getattr(table, model_column), "") == (model or ""),
        func.coalesce(table.prompt_name, "") == (prompt.name if prompt else ""),
        func.coalesce(table.prompt_version, "") == (prompt.version if prompt else ""),
    ]
    old = s.scalar(select(table.id).where(*key))
    if old is not None and not replace:
        raise ConflictError(
            f"{what} already has a {method} score from {model or 'no model'} with this "
            "prompt: pass replace=True to score it again"
        )
    if old is not None:
        s.execute(delete(table).where(table.id == old))
    row = table(
        **owner, method=method, value=value, **{model_column: model},
        prompt_name=prompt.name if prompt else None,
        prompt_version=prompt.version if prompt else None,
        prompt_hash=prompt.hash if prompt else None, **columns,
    )  # fmt: skip
    s.add(row)
    s.flush()
    return row.id


def check_value(value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InputError(
            f"a score value must be a finite number, not {value!r}: "
            "store None with a reason in details"
        )


def primary_method(s: Session) -> str:
    setting = s.get(Setting, PRIMARY_KEY)
    return str(setting.value) if setting is not None else DEFAULT_PRIMARY


def _best(method: str, explanation_id: Any) -> Any:
    """A label's best score of `method`, as a correlated subquery."""
    return (
        select(func.max(Score.value))
        .where(Score.explanation_id == explanation_id, Score.method == method)
        .scalar_subquery()
    )


# ---------------------------------------------------------------- reading rows


def score_info(row: Score | FeatureScore) -> ScoreInfo:
    """A label's score, or a feature's own (whose model column is `model`), as a value."""
    return ScoreInfo(
        id=row.id,
        method=row.method,
        value=row.value,
        details=dict(row.details or {}),
        simulator_model=row.simulator_model if isinstance(row, Score) else row.model,
        prompt_name=row.prompt_name,
        prompt_version=row.prompt_version,
        run_id=row.run_id,
        created_at=row.created_at,
        calls=row.calls or 0,
        tokens_in=row.tokens_in or 0,
        tokens_out=row.tokens_out or 0,
    )

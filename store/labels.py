"""Labels: explanations and the review state machine (their scores: `store.scores`).

A feature has at most one current label (proposed or accepted). Machines add labels
and scores; people accept, reject or edit the current label, and every human action
is kept in `reviews` with the label before and after. Two rules live here and nowhere
else, each decided inside the transaction that writes (`serialized`):

- the replace rule (`may_replace`): a label a human wrote or accepted is replaced only
  by ReplacePolicy.ALL; a machine label that may not replace the current one is kept
  as a candidate;
- the review rule: a reviewer names the label and version they saw, and a stale view
  is a ConflictError, never a lost update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase, check_id, clean_text
from gloss.store.errors import ConflictError, InputError, NotFoundError
from gloss.store.models import Explanation, Feature, Review, Score
from gloss.store.scores import check_value, primary_method, score_info
from gloss.store.statuses import (
    CURRENT_STATUSES,
    AuthorKind,
    ExplanationStatus,
    ReplacePolicy,
)
from gloss.store.types import (
    ExplanationInfo,
    ImportedLabel,
    PromptRef,
    ReviewInfo,
)

REVIEW_ACTIONS = ("accept", "reject", "edit", "note")


class Labels(StoreBase):
    # ------------------------------------------------------------ explanations

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
        status: str = ExplanationStatus.PROPOSED,
        replace: str = ReplacePolicy.MACHINE,
    ) -> int:
        """Add a label. Status proposed/accepted asks for it to become the current label.

        Whether it does is decided here, in the transaction that writes it: it replaces
        the current label only as `replace` allows (REPLACE_NONE: only an unlabeled
        feature; REPLACE_MACHINE: also a model or baseline label nobody accepted;
        REPLACE_ALL: any). Otherwise it is kept as a candidate, so a label a human
        wrote or accepted meanwhile is never superseded by a machine.
        """
        text = clean_text(text, "an explanation")
        if status not in tuple(ExplanationStatus):
            raise InputError(f"unknown explanation status {status!r}")
        if replace not in tuple(ReplacePolicy):
            raise InputError(f"unknown replace policy {replace!r}")
        with self.serialized(feature_id) as s:
            if s.get(Feature, feature_id) is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            if status in CURRENT_STATUSES:
                current = current_label(s, feature_id)
                if current is None or may_replace(current, replace):
                    _supersede_current(s, feature_id)
                else:
                    status = ExplanationStatus.CANDIDATE
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

    def make_current(self, explanation_id: int, *, replace: str = ReplacePolicy.MACHINE) -> bool:
        """Promote a candidate (the best of n, a baseline) to be the feature's current label.

        The same rule as `add_explanation`: the current label is replaced only as
        `replace` allows. Returns whether the explanation is current afterwards.
        """
        feature_id = self._feature_of(explanation_id)
        with self.serialized(feature_id) as s:
            explanation = s.get(Explanation, explanation_id)
            if explanation is None:  # deleted since _feature_of looked
                raise NotFoundError(f"no explanation with id {explanation_id}")
            if explanation.status in CURRENT_STATUSES:
                return True
            current = current_label(s, feature_id)
            if current is not None and not may_replace(current, replace):
                return False
            _supersede_current(s, feature_id)
            explanation.status = ExplanationStatus.PROPOSED
            explanation.version += 1
            return True

    def explanation(self, explanation_id: int) -> ExplanationInfo:
        check_id(explanation_id, "explanation")
        with self.session() as s:
            explanation = s.get(Explanation, explanation_id)
            if explanation is None:
                raise NotFoundError(f"no explanation with id {explanation_id}")
            return explanation_info(explanation, with_scores=True)

    def current_explanation(self, feature_id: int) -> ExplanationInfo | None:
        with self.session() as s:
            explanation = current_label(s, feature_id)
            return explanation_info(explanation, with_scores=True) if explanation else None

    def explanations(self, feature_id: int) -> list[ExplanationInfo]:
        """Every label a feature ever had, newest first, with scores."""
        with self.session() as s:
            rows = s.scalars(
                select(Explanation)
                .where(Explanation.feature_id == feature_id)
                .order_by(Explanation.created_at.desc(), Explanation.id.desc())
            ).all()
            return [explanation_info(e, with_scores=True) for e in rows]

    def label_statuses(
        self, feature_ids: Sequence[int], author_kind: str
    ) -> dict[int, list[tuple[int, str]]]:
        """(label id, status) of each label of one author kind, per feature, newest first:
        what a pass over many features needs, in one query per 5,000 of them."""
        out: dict[int, list[tuple[int, str]]] = {}
        ids = list(feature_ids)
        with self.session() as s:
            for start in range(0, len(ids), 5000):
                rows = s.execute(
                    select(Explanation.feature_id, Explanation.id, Explanation.status)
                    .where(
                        Explanation.feature_id.in_(ids[start : start + 5000]),
                        Explanation.author_kind == author_kind,
                    )
                    .order_by(Explanation.id.desc())
                )
                for feature_id, label_id, status in rows:
                    out.setdefault(feature_id, []).append((label_id, str(status)))
        return out

    def import_labels(self, labels: Sequence[ImportedLabel]) -> list[str]:
        """Add labels other tools wrote, with their scores, all in one transaction.

        Per label, returns "present" when its feature already has a label with the same
        text (so importing a file twice adds nothing), else how it was added, by the
        replace rule for machine labels: "current", or "candidate" where a label a human
        wrote or accepted stands, or where this import already made another of the
        feature's labels current. A failing write rolls back the whole import.
        """
        texts = [clean_text(label.text, "an imported label") for label in labels]
        for label in labels:
            keys = [(score.method, score.model) for score in label.scores]
            if len(set(keys)) < len(keys):
                raise InputError(
                    f"an imported label of feature {label.feature_id} has two scores of one "
                    "method from one model"
                )
            for score in label.scores:
                check_value(score.value)
        ids = sorted({label.feature_id for label in labels})
        with self.serialized() as s:
            known: set[int] = set()
            seen: set[tuple[int, str]] = set()
            current: dict[int, Explanation] = {}
            for start in range(0, len(ids), 5000):
                chunk = ids[start : start + 5000]
                query = select(Feature.id).where(Feature.id.in_(chunk)).order_by(Feature.id)
                known.update(s.scalars(query.with_for_update()))
                for e in s.scalars(select(Explanation).where(Explanation.feature_id.in_(chunk))):
                    seen.add((e.feature_id, e.text))
                    if e.status in CURRENT_STATUSES:
                        current[e.feature_id] = e
            missing = set(ids) - known
            if missing:
                raise NotFoundError(f"no feature with id {min(missing)}")
            primary = primary_method(s)
            made_current: set[int] = set()
            outcomes = []
            for label, text in zip(labels, texts, strict=True):
                if (label.feature_id, text) in seen:
                    outcomes.append("present")
                    continue
                seen.add((label.feature_id, text))
                old = current.get(label.feature_id)
                status = ExplanationStatus.CANDIDATE
                if label.feature_id not in made_current and (
                    old is None or may_replace(old, ReplacePolicy.MACHINE)
                ):
                    _supersede_current(s, label.feature_id)
                    status = ExplanationStatus.PROPOSED
                    made_current.add(label.feature_id)
                values = [sc.value for sc in label.scores if sc.method == primary]
                explanation = Explanation(
                    feature_id=label.feature_id,
                    text=text,
                    author_kind=AuthorKind.MODEL,
                    author_name=label.author_name,
                    model=label.model,
                    status=status,
                    details=label.details,
                    score=max((v for v in values if v is not None), default=None),
                )
                s.add(explanation)
                s.flush()
                for sc in label.scores:
                    s.add(
                        Score(
                            explanation_id=explanation.id,
                            method=sc.method,
                            value=sc.value,
                            details=sc.details,
                            simulator_model=sc.model,
                        )
                    )
                outcomes.append("current" if status == ExplanationStatus.PROPOSED else "candidate")
            return outcomes

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
        reviewer = clean_text(reviewer, "a reviewer's name")
        if text and text.strip() and action == "edit":
            text = clean_text(text, "a label")
        if note is not None:
            note = clean_text(note, "a note", multiline=True) or None
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
        """The review's transaction: check what the reviewer saw, act, and audit."""
        check_id(feature_id, "feature")
        with self.serialized(feature_id) as s:
            if s.get(Feature, feature_id) is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            current = current_label(s, feature_id)
            if expected_explanation_id is not None or expected_version is not None:
                _check_seen(current, expected_explanation_id, expected_version)
            before = _snapshot(current)
            target_id = current.id if current else None
            if action in ("accept", "reject"):
                if current is None:
                    raise InputError("this feature has no current label to " + action)
                current.status = (
                    ExplanationStatus.ACCEPTED if action == "accept" else ExplanationStatus.REJECTED
                )
                current.version += 1
                after = _snapshot(current)
            elif action == "edit":
                edited = _edit(s, feature_id, current, reviewer, text, note)
                target_id, after = edited.id, _snapshot(edited)
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
            return [review_info(r) for r in s.scalars(query).all()]


# ---------------------------------------------------------------- the rules


def current_label(s: Session, feature_id: int) -> Explanation | None:
    return s.scalar(
        select(Explanation).where(
            Explanation.feature_id == feature_id, Explanation.status.in_(CURRENT_STATUSES)
        )
    )


def may_replace(current: Explanation, replace: str) -> bool:
    """The one rule: a label a human wrote or accepted is replaced only by REPLACE_ALL."""
    if replace == ReplacePolicy.ALL:
        return True
    if replace == ReplacePolicy.NONE:
        return False
    return current.author_kind != AuthorKind.HUMAN and current.status != ExplanationStatus.ACCEPTED


def _supersede_current(s: Session, feature_id: int) -> None:
    s.execute(
        update(Explanation)
        .where(Explanation.feature_id == feature_id, Explanation.status.in_(CURRENT_STATUSES))
        .values(status=ExplanationStatus.SUPERSEDED, version=Explanation.version + 1)
    )
    s.flush()


def _check_seen(
    current: Explanation | None, expected_id: int | None, expected_version: int | None
) -> None:
    """ConflictError unless the current label is the one (and version) the reviewer saw."""
    seen_id = current.id if current else None
    if seen_id != expected_id or (
        current is not None and expected_version is not None and current.version != expected_version
    ):
        raise ConflictError(
            "this feature's label changed since you loaded it "
            f"(now: {current.text if current else 'no label'!r}); reload and try again"
        )


def _edit(
    s: Session,
    feature_id: int,
    current: Explanation | None,
    reviewer: str,
    text: str | None,
    note: str | None,
) -> Explanation:
    """A reviewer's own label replaces the current one, accepted, with it as parent."""
    if not text or not text.strip():
        raise InputError("an edit needs the new label text")
    if current is not None:
        current.status = ExplanationStatus.SUPERSEDED
        current.version += 1
        s.flush()
    edited = Explanation(
        feature_id=feature_id,
        text=text,
        author_kind=AuthorKind.HUMAN,
        author_name=reviewer,
        parent_id=current.id if current else None,
        status=ExplanationStatus.ACCEPTED,
        details={"note": note} if note else {},
    )
    s.add(edited)
    s.flush()
    return edited


def _snapshot(explanation: Explanation | None) -> dict[str, Any] | None:
    """A label as the audit trail keeps it, before and after an action."""
    if explanation is None:
        return None
    return {
        "explanation_id": explanation.id,
        "text": explanation.text,
        "status": explanation.status,
        "author_kind": explanation.author_kind,
        "author_name": explanation.author_name,
    }


# ---------------------------------------------------------------- reading rows


def explanation_info(e: Explanation, with_scores: bool = False) -> ExplanationInfo:
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
        scores=[score_info(sc) for sc in sorted(e.scores, key=lambda x: x.id)]
        if with_scores
        else [],
    )


def review_info(r: Review) -> ReviewInfo:
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

"""The words the store writes in its status and kind columns, as enums.

Each is a `StrEnum`, so a member is its word: `ExplanationStatus.ACCEPTED == "accepted"`,
callers pass and compare plain strings, and JSON, templates and f-strings show the word.
`store.models` maps the columns with `sqlalchemy.Enum` over these classes, stored as
VARCHAR(20) without a CHECK constraint: the schema stays the migrations'. Raw SQL in
the store builds its `IN (...)` lists from here with `sql_list`, so a status is spelled
in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class ExplanationStatus(StrEnum):
    """A label's place in its feature's history.

    At most one label per feature is current: proposed or accepted (a partial unique
    index enforces it). A candidate waits to be chosen (best of n, a baseline, or a
    machine label that may not replace a human one); superseded labels were current once.
    """

    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    CANDIDATE = "candidate"


CURRENT_STATUSES = (ExplanationStatus.PROPOSED, ExplanationStatus.ACCEPTED)


class FeatureStatus(StrEnum):
    """New until mined; mined, or dead when it never fired on the corpus."""

    NEW = "new"
    MINED = "mined"
    DEAD = "dead"


MINED_STATUSES = (FeatureStatus.MINED, FeatureStatus.DEAD)


class RunStatus(StrEnum):
    """Running until the run ends one of the other ways; a run whose process died is
    marked abandoned by the next run that notices."""

    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"


class AuthorKind(StrEnum):
    """Who wrote a label: an LLM explainer, a person, or the explainer-free baseline."""

    MODEL = "model"
    HUMAN = "human"
    BASELINE = "baseline"


class ReplacePolicy(StrEnum):
    """Which current label a machine-written one may replace (never stored).

    NONE: only an unlabeled feature gets it; MACHINE: also a model or baseline label
    nobody accepted; ALL: any (`--relabel-human`). A label a human wrote or accepted
    is protected from everything but ALL.
    """

    NONE = "none"
    MACHINE = "machine"
    ALL = "all"


UNLABELED = "unlabeled"
"""The status filter for features with no current label (a filter word, never stored)."""

STATUS_FILTERS: tuple[str, ...] = (
    *(s.value for s in ExplanationStatus if s not in (ExplanationStatus.SUPERSEDED,)),
    UNLABELED,
    *(s.value for s in FeatureStatus),
)
"""Every word `Store.search(status=...)` takes: a label status, unlabeled, a feature status."""


def sql_list(values: Iterable[StrEnum]) -> str:
    """`('proposed', 'accepted')`: enum values as an SQL list, for raw SQL and index predicates."""
    return "(" + ", ".join(f"'{value.value}'" for value in values) + ")"


# The predicate of the partial indexes over current labels, as the migrations wrote it.
CURRENT_SQL = f"status IN {sql_list(CURRENT_STATUSES)}"

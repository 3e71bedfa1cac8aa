"""The baseline explainer: no LLM, the tokens whose activation most exceeds the mean.

Every feature gets one (`gloss run`, `[run] baseline`): it is the current label until an
LLM label succeeds, and the floor every LLM label should beat.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

from gloss.pipeline.labeling import Summary
from gloss.store import REPLACE_NONE, ExampleOut, Store


def lift_label(examples: Sequence[ExampleOut], top_k: int = 5, min_count: int = 2) -> str | None:
    """The tokens whose mean activation most exceeds the overall mean, as a label."""
    total, count = 0.0, 0
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for example in examples:
        for token, act in zip(example.tokens, example.acts, strict=True):
            key = token.strip().lower()
            act = max(0.0, act)
            total += act
            count += 1
            if key:
                sums[key] += act
                counts[key] += 1
    if count == 0 or total <= 0:
        return None
    overall = total / count
    needed = min_count if any(c >= min_count for c in counts.values()) else 1
    lifts = {t: sums[t] / counts[t] / overall for t in sums if counts[t] >= needed and sums[t] > 0}
    best = sorted(lifts, key=lambda t: (-lifts[t], t))[:top_k]
    if not best:
        return None
    return "tokens " + ", ".join(repr(t) for t in best)


def baseline_explain(
    store: Store, feature_ids: Sequence[int], run_id: int | None = None, top_k: int = 5
) -> Summary:
    """Store a no-LLM label (highest activation lift) per feature.

    It becomes the current label of a feature without one, until an LLM label
    replaces it; beside any other current label it is kept as a candidate.
    """
    started = time.perf_counter()
    summary = Summary(features=len(feature_ids))
    labeled = store.label_statuses(feature_ids, "baseline")
    for feature_id in feature_ids:
        if feature_id in labeled:
            summary.skipped += 1
            continue
        label = lift_label(store.examples(feature_id, "explain"), top_k)
        if label is None:
            summary.skipped += 1
            continue
        store.add_explanation(
            feature_id,
            label,
            author_kind="baseline",
            author_name="gloss-baseline:lift",
            run_id=run_id,
            details={"method": "activation lift over explain-split tokens", "top_k": top_k},
            replace=REPLACE_NONE,
        )
        summary.explained += 1
    summary.wall_s = time.perf_counter() - started
    return summary

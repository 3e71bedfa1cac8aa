"""The numbers scores are made of: correlation, balanced accuracy and AUC.

Simulation's score is the Pearson correlation of true and predicted activations pooled
over every token of the held-out windows (OpenAI's "top-and-random"), with per-kind
correlations in the details. Detection and fuzzing report balanced accuracy, embedding
and detection with logprobs an AUC. An undefined value (a constant side, a missing
class, too few tokens) is None with the reason, never NaN. Non-finite activations are a
caller's bug (the simulator turns such answers into failures), so they raise ValueError:
NaN compares false with everything, and a clamp would turn it into a perfect 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_OVERFLOW = "the activations are too large to correlate in floating point"


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str | None]:
    """The correlation of x and y, or (None, reason) when it is undefined."""
    if len(x) != len(y):
        raise ValueError(f"pearson needs equal lengths, got {len(x)} and {len(y)}")
    _check_finite(x, "true")
    _check_finite(y, "predicted")
    n = len(x)
    if n < 2:
        return None, f"only {n} token(s) to correlate"
    try:
        mean_x = math.fsum(x) / n
        mean_y = math.fsum(y) / n
        sxx = math.fsum((a - mean_x) * (a - mean_x) for a in x)
        syy = math.fsum((b - mean_y) * (b - mean_y) for b in y)
        sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    except (OverflowError, ValueError):  # fsum: intermediate overflow, or inf - inf
        return None, _OVERFLOW
    if not (math.isfinite(sxx) and math.isfinite(syy) and math.isfinite(sxy)):
        return None, _OVERFLOW
    if sxx <= 0:
        return None, "true activations are constant over these tokens"
    if syy <= 0:
        return None, "predicted activations are constant over these tokens"
    r = sxy / (math.sqrt(sxx) * math.sqrt(syy))
    if not math.isfinite(r):
        return None, _OVERFLOW
    return max(-1.0, min(1.0, r)), None


def _check_finite(values: Sequence[float], side: str) -> None:
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"{side} activation {i} is {value!r}: scores need finite numbers")


def _group(kind: str) -> str:
    return kind.split(":", 1)[0]


def simulation_score(
    true: Sequence[Sequence[float]],
    predicted: Sequence[Sequence[float]],
    kinds: Sequence[str],
) -> tuple[float | None, dict[str, Any]]:
    """Pooled correlation over all windows, plus per-kind correlations, as (value, details)."""
    if not (len(true) == len(predicted) == len(kinds)):
        raise ValueError("true, predicted and kinds need one entry per window")
    for t, p in zip(true, predicted, strict=True):
        if len(t) != len(p):
            raise ValueError(f"a window has {len(t)} true and {len(p)} predicted activations")
        _check_finite(t, "true")
        _check_finite(p, "predicted")
    details: dict[str, Any] = {"n_windows": len(true), "n_tokens": sum(len(t) for t in true)}

    def pooled(selected: list[int]) -> tuple[float | None, str | None]:
        xs = [a for i in selected for a in true[i]]
        ys = [b for i in selected for b in predicted[i]]
        return pearson(xs, ys)

    value, reason = pooled(list(range(len(true))))
    details["all"] = value
    if reason:
        details["reason"] = reason
    for group in sorted({_group(k) for k in kinds}):
        group_value, group_reason = pooled([i for i, k in enumerate(kinds) if _group(k) == group])
        details[f"{group}_only"] = group_value
        if group_reason:
            details[f"{group}_only_reason"] = group_reason
    return value, details


def balanced_accuracy(
    truth: Sequence[bool], predicted: Sequence[bool]
) -> tuple[float | None, str | None]:
    """(true positive rate + true negative rate) / 2, or (None, reason) without both classes.

    Chance is 0.5 whatever the share of positives, so features with few silent windows
    and features with many compare.
    """
    if len(truth) != len(predicted):
        raise ValueError(
            f"balanced_accuracy needs equal lengths, got {len(truth)} and {len(predicted)}"
        )
    positives = [p for t, p in zip(truth, predicted, strict=True) if t]
    negatives = [p for t, p in zip(truth, predicted, strict=True) if not t]
    if not positives or not negatives:
        return (
            None,
            f"needs both classes, got {len(positives)} positive and {len(negatives)} negative",
        )
    tpr = sum(positives) / len(positives)
    tnr = sum(not p for p in negatives) / len(negatives)
    return (tpr + tnr) / 2, None


def auc(truth: Sequence[bool], scores: Sequence[float]) -> tuple[float | None, str | None]:
    """The probability that a random positive scores above a random negative (ties count
    half): the area under the ROC curve, or (None, reason) without both classes."""
    if len(truth) != len(scores):
        raise ValueError(f"auc needs equal lengths, got {len(truth)} and {len(scores)}")
    _check_finite(scores, "score")
    positives = [s for t, s in zip(truth, scores, strict=True) if t]
    negatives = [s for t, s in zip(truth, scores, strict=True) if not t]
    if not positives or not negatives:
        return (
            None,
            f"needs both classes, got {len(positives)} positive and {len(negatives)} negative",
        )
    wins = 0.0
    for p in positives:
        for n in negatives:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(positives) * len(negatives)), None

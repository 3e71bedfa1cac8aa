"""Simulation scores: how well predicted activations track the true ones.

The score is the Pearson correlation of true and predicted activations pooled over
every token of the held-out windows (OpenAI's "top-and-random"). Top-only and
random-only correlations go in the details. An undefined correlation (a constant
side, too few tokens) is None with the reason, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str | None]:
    """The correlation of x and y, or (None, reason) when it is undefined."""
    if len(x) != len(y):
        raise ValueError(f"pearson needs equal lengths, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return None, f"only {n} token(s) to correlate"
    mean_x = math.fsum(x) / n
    mean_y = math.fsum(y) / n
    sxx = math.fsum((a - mean_x) ** 2 for a in x)
    syy = math.fsum((b - mean_y) ** 2 for b in y)
    sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    if sxx <= 0:
        return None, "true activations are constant over these tokens"
    if syy <= 0:
        return None, "predicted activations are constant over these tokens"
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))), None


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

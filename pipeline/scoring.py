"""Simulation scores: how well predicted activations track the true ones.

The score is the Pearson correlation of true and predicted activations pooled over
every token of the held-out windows (OpenAI's "top-and-random"). Top-only and
random-only correlations go in the details. An undefined correlation (a constant
side, too few tokens) is None with the reason, never NaN. Non-finite activations are a
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

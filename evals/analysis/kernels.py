"""The numbers behind every verdict, on plain arrays (the rules: docs/methodology.md).

- `iqm`: the interquartile mean (25% trimmed each end; fewer than four values: their mean).
- `log_ratio_bounds`: per paired seed, the lowest and highest the log cost ratio can be, with a
  censored run's cost bounded by its budget.
- `ratio_interval`: the IQM ratio and its seeded paired-bootstrap interval, censored ratios at
  the end of their range least favourable to each limit.
- `verdict`: holds, refuted or inconclusive for "ratio <= threshold".
"""

from __future__ import annotations

import math

import numpy as np

MIN_SEEDS = 3
HEADLINE_SEEDS = 8  # fewer paired seeds make a verdict smoke-scale
TINY = 1e-12


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean of the middle half. Infinities sort to the ends."""
    values = np.sort(values, axis=axis)
    n = values.shape[axis]
    cut = int(math.floor(0.25 * n))
    middle = np.take(values, range(cut, n - cut), axis=axis)
    with np.errstate(invalid="ignore"):
        return middle.mean(axis=axis)


def log_ratio_bounds(
    ours: np.ndarray,
    ours_reached: np.ndarray,
    ours_budget: np.ndarray,
    theirs: np.ndarray,
    theirs_reached: np.ndarray,
    theirs_budget: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per paired seed: (low, high) of log(cost ours / cost theirs) and counts of each kind of
    pair. Both reached: the ratio itself. Ours censored: at least budget / theirs. Theirs
    censored: at most ours / their budget. Both censored: anything."""
    low, high = np.empty(len(ours)), np.empty(len(ours))
    counts = {"censored_method": 0, "censored_reference": 0, "censored_both": 0}
    for i in range(len(ours)):
        if ours_reached[i] and theirs_reached[i]:
            low[i] = high[i] = math.log(max(ours[i], TINY) / max(theirs[i], TINY))
        elif theirs_reached[i]:
            counts["censored_method"] += 1
            low[i], high[i] = math.log(max(ours_budget[i], TINY) / max(theirs[i], TINY)), math.inf
        elif ours_reached[i]:
            counts["censored_reference"] += 1
            low[i], high[i] = -math.inf, math.log(max(ours[i], TINY) / max(theirs_budget[i], TINY))
        else:
            counts["censored_both"] += 1
            low[i], high[i] = -math.inf, math.inf
    return low, high, counts


def ratio_interval(
    low: np.ndarray, high: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the IQM cost ratio: the estimate from the pairs with a known
    ratio or a finite bound, the limits from a seeded paired bootstrap over seeds."""
    if len(low) == 0:
        return math.nan, math.nan, math.nan
    point = np.where(np.isfinite(low), low, high)
    point = point[np.isfinite(point)]
    estimate = math.exp(float(iqm(point))) if len(point) else math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(low), size=(resamples, len(low)))
    alpha = 1 - confidence
    lows, highs = iqm(low[index], axis=1), iqm(high[index], axis=1)
    lower = float(np.quantile(lows, alpha / 2, method="lower"))
    upper = float(np.quantile(highs, 1 - alpha / 2, method="higher"))
    return estimate, math.exp(lower), math.exp(upper)


def verdict(lower: float, upper: float, threshold: float, seeds: int) -> str:
    """`holds`, `refuted` or `inconclusive` for the claim ratio <= threshold."""
    if seeds < MIN_SEEDS or math.isnan(lower) or math.isnan(upper):
        return "inconclusive"
    edge = threshold * (1 + 1e-9)  # round-off of exp(log(ratio)) is not evidence either way
    if upper <= edge:
        return "holds"
    if lower > edge:
        return "refuted"
    return "inconclusive"

"""Cost to quality and verdicts: numpy kernels (`kernels`: the interquartile mean, the paired
bootstrap interval, the verdict) under a thin pandas adapter (`frames`: targets per seed,
crossings, censored paired ratios, verdict tables, the quality guard). The rules are written
out once, in docs/methodology.md."""

from evals.analysis.frames import (
    COST_UNITS,
    KEYS,
    Options,
    cost_to_quality,
    paired_ratio,
    quality_guard,
    runs_to_target,
    verdicts,
)
from evals.analysis.kernels import HEADLINE_SEEDS, MIN_SEEDS, iqm, ratio_interval, verdict

__all__ = [
    "COST_UNITS",
    "HEADLINE_SEEDS",
    "KEYS",
    "MIN_SEEDS",
    "Options",
    "cost_to_quality",
    "iqm",
    "paired_ratio",
    "quality_guard",
    "ratio_interval",
    "runs_to_target",
    "verdict",
    "verdicts",
]

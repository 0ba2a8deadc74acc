"""Experiments as functions: a spec in, a record out. The command line only parses flags into
these specs and calls these functions; a notebook calls them directly:

    from evals.experiment import RunSpec, run
    record = run(RunSpec(task="latent", method="shortcut", model="embedded-flow", steps=10, iters=8, out=None))
"""

from evals.bench import backward_cost, bench, profile
from evals.embedded import quality, train
from evals.guide import guide
from evals.run import run
from evals.specs import (
    BackwardCostSpec,
    BenchSpec,
    GuideSpec,
    PlanSpec,
    ProfileSpec,
    QualitySpec,
    RunSpec,
    TrainSpec,
)

__all__ = [
    "BackwardCostSpec",
    "BenchSpec",
    "GuideSpec",
    "PlanSpec",
    "ProfileSpec",
    "QualitySpec",
    "RunSpec",
    "TrainSpec",
    "backward_cost",
    "bench",
    "guide",
    "profile",
    "quality",
    "run",
    "train",
]

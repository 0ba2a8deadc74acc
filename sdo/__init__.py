"""Backpropagation through diffusion sampling: one chain, many ways to get its gradient."""

from sdo import edict
from sdo.chain import DDIMChain
from sdo.estimators import ESTIMATORS, NotApplicable, Problem, make_estimator

__all__ = ["edict", "DDIMChain", "ESTIMATORS", "NotApplicable", "Problem", "make_estimator"]

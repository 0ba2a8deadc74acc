"""Backpropagation through diffusion sampling: one chain, many ways to get its gradient."""

from sdo import edict
from sdo.estimators import ESTIMATORS, NotApplicable, Problem, make_estimator
from sdo.samplers import SAMPLERS, Chain, make_chain

__all__ = ["edict", "Chain", "ESTIMATORS", "NotApplicable", "Problem", "SAMPLERS", "make_chain", "make_estimator"]

"""DRTune (Wu et al., ECCV 2024): reward supervision at K evenly spaced steps with detached inputs.

Rule: at the K = `supervised` steps k_i = floor(i T / K), i = 0..K-1 (so K = 1 is the first
step and K = T every step), the network is called on a detached input, keeping a graph to the
conditioning or the weights only; every other call runs without a graph; the affine part of
each update z_{k+1} = a_k z_k + b_k out_k stays in the gradient. That is the shortcut's sum over these
K steps (`sdo.estimators.shortcut`), computed the same way: one sampling pass without a graph,
then one replay per supervised step (K = 1 keeps its graph during the pass). K = T is the
shortcut's `all`, K = 1 its `first`.
Cost: T forward, then K forward + K backward network evaluations (K = 1: 1 backward), one
step's graph at a time: O(1) autograd memory in T.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdo.estimators.base import NotApplicable
from sdo.estimators.registry import register_estimator
from sdo.estimators.shortcut import Replay


@register_estimator
@dataclass
class DRTune(Replay):
    name = "drtune"
    supervised: int = 1

    def __post_init__(self):
        if self.supervised < 1:
            raise ValueError(f"drtune supervised must be >= 1, got {self.supervised}")

    def chosen(self, problem):
        steps = problem.chain.steps
        if self.supervised > steps:
            raise ValueError(f"drtune supervised={self.supervised} exceeds the chain's {steps} steps")
        if problem.wrt == "latent":
            raise NotApplicable(
                "drtune detaches every network input, so the initial latent reaches the sample only "
                "through the affine skip prod_k a_k (no network Jacobian); use shortcut at=first"
            )
        return [i * steps // self.supervised for i in range(self.supervised)], 1.0

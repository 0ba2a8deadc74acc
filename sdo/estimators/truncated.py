"""Truncated backpropagation: DRaFT-K, and AlignProp's randomised truncation.

Rule: sample the first T-K steps without a graph and the last K = `tail` with one, then
backpropagate (the gradient of everything before the tail is dropped). With `randomize`, K is
drawn uniformly from 1..tail once per call, so the graph is always one contiguous tail of the
chain. The initial latent is reachable only when K = T.
Cost: T forward + K backward network evaluations; autograd keeps K steps, O(K) (one step's
activations plus K states with `checkpoint`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sdo.estimators.base import Estimator, NotApplicable
from sdo.estimators.full import backprop_through_tail
from sdo.estimators.registry import register_estimator


@register_estimator
@dataclass
class Truncated(Estimator):
    name = "truncated"
    tail: int = 1
    randomize: bool = False
    checkpoint: bool = False
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if self.tail < 1:
            raise ValueError(f"truncated tail must be >= 1, got {self.tail}")
        self._rng = random.Random(self.seed)

    def gradient(self, problem, loss):
        steps = problem.chain.steps
        if self.tail > steps:
            raise ValueError(f"truncated tail={self.tail} exceeds the chain's {steps} steps")
        if problem.wrt == "latent" and (self.tail < steps or (self.randomize and steps > 1)):
            raise NotApplicable(
                f"truncation (tail={self.tail}, randomize={self.randomize}, T={steps}) cannot reach the initial "
                "latent: needs tail = T"
            )
        tail = self._rng.randint(1, self.tail) if self.randomize else self.tail
        return backprop_through_tail(problem, loss, graph_from=steps - tail, checkpoint=self.checkpoint)

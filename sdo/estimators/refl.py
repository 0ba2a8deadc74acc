"""ReFL (Xu et al., ImageReward, NeurIPS 2023): the reward on one late step's predicted sample.

Rule: draw k uniformly from the last M = min(`last`, T) steps (T-M..T-1), sample without a
graph down to z_k, call the network once with a graph (to the conditioning or the weights),
and put the loss on that step's prediction x0_hat_k = p_k z_k + q_k out_k
instead of on the finished sample; x0_hat_k is returned as the sample. The drawn step is the
one graph step the meter records. The initial latent is not reachable: everything before
step k is detached.
Cost: k forward without a graph, then 1 forward + 1 backward; autograd holds one step's graph.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sdo.estimators.base import Estimator, NotApplicable, backprop
from sdo.estimators.registry import register_estimator


@register_estimator
@dataclass
class ReFL(Estimator):
    name = "refl"
    last: int = 10
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if self.last < 1:
            raise ValueError(f"refl last must be >= 1, got {self.last}")
        self._rng = random.Random(self.seed)

    def gradient(self, problem, loss):
        chain, cond = problem.chain, problem.cond
        if problem.wrt == "latent":
            raise NotApplicable(
                "refl detaches every state before its one graph step: the initial latent does not reach the loss"
            )
        k = self._rng.randrange(chain.steps - min(self.last, chain.steps), chain.steps)
        z, _ = chain.warm_up(problem.latent, cond, k)
        sample = chain.predicted_sample(z, k, chain.predict(z, k, cond))
        value = loss(sample)
        return sample, value, backprop(value, problem.params)

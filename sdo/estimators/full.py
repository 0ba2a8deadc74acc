"""Full backpropagation through every step.

Rule: autograd through all T steps, optionally checkpointing each step (its activations are
recomputed during backward, as AlignProp and DRaFT do).
Cost: T forward + T backward network evaluations (+T forward with checkpointing); autograd
keeps every step's activations, O(T), or only the T states plus one step's activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdo.estimators.base import Estimator, Loss, Problem, backprop
from sdo.estimators.registry import register_estimator


def backprop_through_tail(problem: Problem, loss: Loss, graph_from: int, checkpoint: bool):
    """Sample with a graph from step `graph_from` on, then backpropagate the loss."""
    sample = problem.chain.sample(problem.latent, problem.cond, graph_from=graph_from, checkpoint=checkpoint)
    value = loss(sample)
    return sample, value, backprop(value, problem.params)


@register_estimator
@dataclass
class Full(Estimator):
    name = "full"
    exact = True
    checkpoint: bool = False

    def gradient(self, problem, loss):
        return backprop_through_tail(problem, loss, graph_from=0, checkpoint=self.checkpoint)

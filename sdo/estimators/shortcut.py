"""Shortcut Diffusion Optimization (SDO): the gradient takes a shortcut past all but chosen steps.

Rule: in exponential-integrator form the chain is one fixed-point system,
z_T / sqrt(a_T) = z_0 / sqrt(a_0) + sum_k (sigma_{k+1} - sigma_k) eps(z_k, t_k, c); SDO
differentiates it with every z_k inside eps held constant, except where that input is the
parameter. Equivalently, each DDIM update z_{k+1} = c1_k z_k + c2_k eps_k stays linear in the
gradient while the network calls off the chosen steps are detached, so

    dL/dp = g * prod_k c1_k * [p is the latent]  +  w * sum_{k in S} vjp(eps_k, g * c2_k * prod_{j>k} c1_j)

with g = dL/dz_T. Steps S, chosen by `at`: `first` (the released rule; for the latent the only step whose
input is the parameter), `last`, `random` (one step drawn per call, w = T, an unbiased
estimate of `all`) or `all` (the whole sum).
Cost: one sampling pass without a graph (T forward), then |S| forward + |S| backward, one
step's graph at a time: O(1) autograd memory in T.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from sdo.estimators.base import Estimator, Loss, Problem

AT_CHOICES = ("first", "last", "random", "all")


class Replay(Estimator):
    """The rules that sample without a graph, then replay chosen steps one graph at a time
    with the linear skip factor above. Subclasses say which steps (`chosen`) and may supply
    the trajectory another way (`trajectory`)."""

    def chosen(self, problem: Problem) -> tuple[list[int], float]:
        """The steps S to replay and the weight w of their sum."""
        raise NotImplementedError

    def trajectory(self, problem: Problem, keep: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The sample z_T and the states z_k for k in `keep`, all without a graph."""
        return problem.chain.trajectory(problem.latent, problem.cond, keep=keep)

    def depth(self, estimate, steps):
        """The sampling pass, then one round of replays: they are independent of each other."""
        return steps + 2 * bool(estimate.nfe_backward)

    def gradient(self, problem: Problem, loss: Loss):
        chain, params = problem.chain, problem.params
        chosen, weight = self.chosen(problem)
        final, states = self.trajectory(problem, chosen)
        sample = final.requires_grad_()
        value = loss(sample)
        (g,) = torch.autograd.grad(value, sample)
        c1 = [c[0] for c in chain.coefficients]
        grads = [torch.zeros_like(p) for p in params]
        if problem.wrt == "latent":
            grads[0] += g * math.prod(c1)
        for k in chosen:
            z = problem.latent if problem.wrt == "latent" else states[k]
            eps = chain.eps(z, k, problem.cond)
            cotangent = g * (weight * chain.coefficients[k][1] * math.prod(c1[k + 1 :]))
            for total, part in zip(grads, torch.autograd.grad(eps, params, cotangent, allow_unused=True)):
                if part is not None:
                    total += part
        return sample, value, grads


@dataclass
class Shortcut(Replay):
    name = "shortcut"
    at: str = "first"
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if self.at not in AT_CHOICES:
            raise ValueError(f"shortcut option at must be one of {AT_CHOICES}, got {self.at!r}")
        self._rng = random.Random(self.seed)

    def chosen(self, problem):
        total = problem.chain.steps
        if self.at == "random":
            chosen, weight = [self._rng.randrange(total)], float(total)
        else:
            chosen, weight = {"first": [0], "last": [total - 1], "all": list(range(total))}[self.at], 1.0
        if problem.wrt == "latent":  # later network calls do not see the latent directly
            chosen = [k for k in chosen if k == 0]
        return chosen, weight

"""Shortcut Diffusion Optimization (SDO): the gradient takes a shortcut past all but chosen steps.

Rule: unrolled, the chain is z_T = (prod_k a_k) z_0 + sum_k (prod_{j>k} a_j) b_k out(z_k, t_k, c)
(plus the fixed noise terms), one fixed-point system over the states (in DDIM's exponential-
integrator form, z_T / sqrt(abar_T) = z_0 / sqrt(abar_0) + sum_k (sigma_{k+1} - sigma_k) eps_k).
SDO differentiates it with every z_k inside out(.) held constant, except where that input is
the parameter, so the affine path of every update stays in the gradient while the network
calls off the chosen steps are detached:

    dL/dp = g * prod_k a_k * [p is the latent]  +  w * sum_{k in S} vjp(out_k, g * b_k * prod_{j>k} a_j)

with g = dL/dz_T. The identity stands in for the product of the other steps' network
Jacobians, which is close to it when steps are small: the claim the harness tests, for any
affine-step sampler. Steps S, chosen by `at`: `first` (the released rule; for the latent the
only step whose input is the parameter), `last`, `random` (one step drawn per call, w = T, an
unbiased estimate of `all`) or `all` (the whole sum).
Cost: one sampling pass without a graph (T forward) in which a single chosen step keeps its
graph, then 1 backward; with several chosen steps, |S| replays of 1 forward + 1 backward after
the pass, one step's graph at a time: O(1) autograd memory in T either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from sdo.estimators.base import Estimator, Loss, Problem, accumulate
from sdo.estimators.registry import register_estimator

AT_CHOICES = ("first", "last", "random", "all")


class Replay(Estimator):
    """The rules that sample without a graph and differentiate chosen steps one graph at a time
    with the affine skip factor above. Subclasses say which steps (`chosen`) and may supply
    the trajectory another way (`trajectory`). A single chosen step keeps its network call's
    graph during the sampling pass itself (T forward + 1 backward, as the released code does);
    several are replayed one at a time after it (T + |S| forward + |S| backward, O(1) memory)."""

    def chosen(self, problem: Problem) -> tuple[list[int], float]:
        """The steps S to differentiate and the weight w of their sum."""
        raise NotImplementedError

    def trajectory(self, problem: Problem, keep: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The sample z_T and the states z_k for k in `keep`, all without a graph."""
        return problem.chain.trajectory(problem.latent, problem.cond, keep=keep)

    def predictions(self, problem: Problem, chosen: list[int]) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """The sample z_T and a function giving step k's network output with a graph to the
        parameters (its input held fixed, unless it is the latent being differentiated)."""
        chain = problem.chain
        if len(chosen) == 1 and type(self).trajectory is Replay.trajectory:
            final, held = _pass_holding(problem, chosen[0])
            return final, lambda k: held
        final, states = self.trajectory(problem, chosen)
        return final, lambda k: chain.predict(problem.input_at(k, states[k]), k, problem.cond)

    def depth(self, estimate, steps):
        """The sampling pass, then the backward of a held step or one round of independent replays."""
        replayed = estimate.nfe_forward > steps
        return steps + (2 if replayed else 1) * bool(estimate.nfe_backward)

    def gradient(self, problem: Problem, loss: Loss):
        chain, params = problem.chain, problem.params
        chosen, weight = self.chosen(problem)
        final, prediction = self.predictions(problem, chosen)
        sample = final.requires_grad_()
        value = loss(sample)
        (g,) = torch.autograd.grad(value, sample)
        grads = [torch.zeros_like(p) for p in params]
        if problem.wrt == "latent":
            grads[0] += g * chain.skip_factor(0)
        for k in chosen:
            cotangent = g * (weight * chain.coefficients[k].b * chain.skip_factor(k + 1))
            accumulate(grads, torch.autograd.grad(prediction(k), params, cotangent, allow_unused=True))
        return sample, value, grads


def _pass_holding(problem: Problem, held_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampling pass without a graph, except that step `held_step`'s network call keeps its
    graph to the parameters: the sample z_T and that call's output."""
    chain, z, held = problem.chain, problem.latent.detach(), None
    with torch.no_grad():
        for k in range(chain.steps):
            if k != held_step:
                z = chain.step(z, k, problem.cond)
                continue
            with torch.enable_grad():
                held = chain.predict(problem.input_at(k, z), k, problem.cond)
            z = chain.update(z, k, held.detach())
    return z, held


@register_estimator
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

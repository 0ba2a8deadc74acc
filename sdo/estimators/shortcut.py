"""Shortcut Diffusion Optimization (SDO): the gradient takes a shortcut past all but chosen steps.

Rule: along its affine path the chain is linear: z_T = r_0 z_0 + sum_k w_k out(z_k, t_k, c)
(plus the fixed noise terms), with scalars r_0 = d z_T / d z_0 and w_k = d z_T / d out_k from the
steps' coefficients alone (`Chain.influence`; for a single-step sampler r_0 = prod_k a_k and
w_k = b_k prod_{j>k} a_j; for a multistep one the same backward recursion also runs through the
earlier states' and predictions' coefficients e_kj, b_kj). In DDIM's exponential-integrator form
this is z_T / sqrt(abar_T) = z_0 / sqrt(abar_0) + sum_k (sigma_{k+1} - sigma_k) eps_k, one
fixed-point system over the states. SDO differentiates it with every z_k inside out(.) held
constant, except where that input is the parameter, so the affine path of every update stays in
the gradient while the network calls off the chosen steps are detached:

    dL/dp = g * r_0 * r * [p is the latent]  +  w * sum_{k in S} vjp(out_k, g * w_k)

with g = dL/dz_T and r the chain's initial scale (z_0 = r * latent). The identity stands in for
the product of the other steps' network Jacobians, which is close to it when steps are small:
the claim the harness tests, for any affine-step sampler of any order. Steps S, chosen by `at`:
`first` (the released rule; for the latent the only step whose input is the parameter), `last`,
`random` (one step drawn per call, w = T, an unbiased estimate of `all`) or `all` (the whole sum).
Cost: one sampling pass without a graph (T forward) in which a single chosen step keeps its
graph, then 1 backward; with several chosen steps, |S| replays of 1 forward + 1 backward after
the pass, one step's graph at a time: O(1) autograd memory in T either way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
        through_state, through_out = chain.influence()
        if problem.wrt == "latent":
            grads[0] += g * (through_state * chain.initial_scale)
        for k in chosen:
            cotangent = g * (weight * through_out[k])
            accumulate(grads, torch.autograd.grad(prediction(k), params, cotangent, allow_unused=True))
        return sample, value, grads


def _pass_holding(problem: Problem, held_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampling pass without a graph, except that step `held_step`'s network call keeps its
    graph to the parameters: the sample z_T and that call's output."""
    chain, held, earlier = problem.chain, None, problem.chain.past
    with torch.no_grad():
        z = chain.start(problem.latent.detach())
        for k in range(chain.steps):
            if k != held_step:
                z, earlier = chain.proceed(z, k, problem.cond, earlier)
                continue
            with torch.enable_grad():
                held = chain.predict(problem.input_at(k, z), k, problem.cond)
            z, earlier = chain.advance(z, k, held.detach(), earlier)
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

"""DOODL: backpropagation through EDICT's invertible sampler without storing the chain.

Rule: sample with EDICT (see `sdo.edict`) without a graph; then, from the last step back,
rebuild each step's inputs from its outputs by exact inversion, recompute that step with a
graph, and pull the cotangents (dL/dx, dL/dy) through it. The gradient equals autograd's
through the same coupled chain, up to inversion round-off, for DDIM and for flow matching's
Euler step alike. DOODL's renormalisation of the latent after each update is the latent
task's `renormalize` option. EDICT samples what the base sampler samples only when its steps
are small (about T >= 50 on the embedded digits model): below that its start is not the
base sampler's, which the harness reports as `invalid_start`.
Cost: 2T forward, then per step 2 forward (inversion) + 2 forward + 2 backward: about 6T
forward and 2T backward network evaluations; autograd holds one step's graph: O(1) in T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdo import edict
from sdo.estimators.base import Estimator, accumulate
from sdo.estimators.registry import register_estimator


@register_estimator
@dataclass
class Doodl(Estimator):
    name = "doodl"
    needs = ("deterministic", "single_step")
    caveat = "doodl samples with EDICT, not the base sampler: it starts elsewhere at small T"
    mix: float = edict.DEFAULT_MIX

    def __post_init__(self):
        if not 0.5 < self.mix < 1:
            raise ValueError(f"doodl mix p must lie in (0.5, 1) for a stable inversion, got {self.mix}")

    def sample(self, chain, latent, cond):
        """EDICT's sample x_T: DOODL optimises it, so evaluations judge it (its start differs
        from the base sampler's at small T)."""
        with torch.no_grad():
            return edict.sample(chain, latent, cond, self.mix)[0]

    def gradient(self, problem, loss):
        chain, params, cond = problem.chain, problem.params, problem.cond
        with torch.no_grad():
            x, y = edict.sample(chain, problem.latent, cond, self.mix)
        sample = x.requires_grad_()
        value = loss(sample)
        (gx,) = torch.autograd.grad(value, sample)
        gy = torch.zeros_like(gx)
        grads = [torch.zeros_like(p) for p in params]
        x = x.detach()
        for k in reversed(range(chain.steps)):
            with torch.no_grad():
                x, y = edict.invert(chain, x, y, k, cond, self.mix)
            x_in, y_in = x.requires_grad_(), y.requires_grad_()
            outputs = edict.step(chain, x_in, y_in, k, cond, self.mix)
            gx, gy, *parts = torch.autograd.grad(outputs, [x_in, y_in, *params], (gx, gy), allow_unused=True)
            accumulate(grads, parts)
            x, y = x.detach(), y.detach()
        if problem.wrt == "latent":
            grads[0] += (gx + gy) * chain.initial_scale
        return sample, value, grads

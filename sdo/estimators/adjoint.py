"""AdjointDPM-style adjoint: backwards through the sampler's steps, states rebuilt, never stored.

Rule: a deterministic step z_{k+1} = a_k z_k + b_k out(z_k) is the explicit (Euler or
exponential-integrator) solution of the probability-flow ODE on the sampler's grid. After
sampling without a graph, the adjoint lambda = dL/dz and dL/dp are carried backwards on the
same grid while each state is rebuilt from the one after it by inverting its step with two
fixed-point iterations, then differentiated:

    z_k  ~ (z_{k+1} - b_k out(z_{k+1} / a_k)) / a_k              (one step of inversion)
    out_k = out(z_k)                                             (with a graph; z_k refined by it)
    lambda_k = a_k lambda_{k+1} + (d out_k / dz)^T (b_k lambda_{k+1}),
    dL/dp   += (d out_k / dp)^T (b_k lambda_{k+1})

For DDIM this is DDIM inversion in y = z / sqrt(abar); for flow matching's Euler step (a = 1)
it is z_k = z_{k+1} - (sigma_{k+1} - sigma_k) v. It is the discrete adjoint of the sampler, so
it equals `full` up to the error of the rebuilt states, which vanishes as the grid is refined.
It needs an invertible sampler: deterministic (no fresh noise) and single-step. A multistep
solver's state is rebuilt only from the earlier states and predictions as well, which would
have to be stored (O(T) memory, what the adjoint exists to avoid): there it is not applicable.
Cost: T forward, then 2T forward + T backward; autograd holds one step's graph: O(1) in T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdo.estimators.base import Estimator, Problem, accumulate
from sdo.estimators.registry import register_estimator


def backward_solve(problem: Problem, sample: torch.Tensor, cotangent: torch.Tensor | None):
    """Carry the state (and, given dL/dz_T, the adjoint) from the sample back to step 0:
    the rebuilt initial latent and the gradients of the problem's parameters."""
    chain, params, cond = problem.chain, problem.params, problem.cond
    z, lam = sample.detach(), cotangent
    grads = [torch.zeros_like(p) for p in params]
    for k in reversed(range(chain.steps)):
        step = chain.coefficients[k]
        with torch.no_grad():
            rebuilt = ((z - step.b * chain.predict(z / step.a, k, cond)) / step.a).requires_grad_(lam is not None)
        with torch.set_grad_enabled(lam is not None):
            out = chain.predict(rebuilt, k, cond)
        if lam is not None:
            parts = torch.autograd.grad(out, [rebuilt, *params], step.b * lam, allow_unused=True)
            accumulate(grads, parts[1:])
            lam = step.a * lam + (0 if parts[0] is None else parts[0])
        z = (z - step.b * out.detach()) / step.a
    if problem.wrt == "latent" and lam is not None:
        grads[0] += lam * chain.initial_scale
    return z / chain.initial_scale, grads


@register_estimator
@dataclass
class Adjoint(Estimator):
    name = "adjoint"
    needs = ("deterministic", "invertible")

    def gradient(self, problem, loss):
        final, _ = problem.chain.trajectory(problem.latent, problem.cond)
        sample = final.requires_grad_()
        value = loss(sample)
        (g,) = torch.autograd.grad(value, sample)
        _, grads = backward_solve(problem, sample, g)
        return sample, value, grads


def reconstruction_error(problem: Problem) -> float:
    """Relative error of the initial latent as the backward solve rebuilds it from the sample."""
    final, _ = problem.chain.trajectory(problem.latent, problem.cond)
    z0, _ = backward_solve(problem, final, None)
    return float((z0 - problem.latent).norm() / problem.latent.norm())

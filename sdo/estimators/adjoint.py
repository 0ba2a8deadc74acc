"""AdjointDPM-style adjoint: backwards through the probability-flow ODE, states reconstructed.

Rule: in exponential-integrator coordinates y = z / sqrt(a), sigma = sqrt((1 - a) / a), the
probability-flow ODE is dy/dsigma = f(y, sigma) = eps(sqrt(a) y, t(sigma), c), and DDIM is its
Euler solution y_{k+1} = y_k + h_k f(y_k, sigma_k), h_k = sigma_{k+1} - sigma_k. After sampling
without a graph, the adjoint lambda = dL/dy and dL/dp are carried backwards on the same grid
while the states are rebuilt from the sample, never stored:

    y_k   ~ y_{k+1} - h_k f(y_{k+1}, sigma_k)                (one step of DDIM inversion)
    f_k   = f(y_k, sigma_k)                                   (with a graph; y_k refined by it)
    lambda_k = lambda_{k+1} + h_k (df_k/dy)^T lambda_{k+1},   dL/dp += h_k (df_k/dp)^T lambda_{k+1}

This is the discrete adjoint of the sampler, so it equals `full` up to the error of the
reconstructed states, which vanishes as the grid is refined. Only for eta = 0.
Cost: T forward, then 2T forward + T backward; autograd holds one step's graph: O(1) in T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdo.estimators.base import Estimator, NotApplicable, Problem


def backward_solve(problem: Problem, sample: torch.Tensor, cotangent: torch.Tensor | None):
    """Carry the state (and, given dL/dz_T, the adjoint) from the sample back to step 0:
    the reconstructed initial latent and the gradients of the problem's parameters."""
    chain, params = problem.chain, problem.params
    alphas, sigmas = chain.alphas, chain.sigmas
    y = sample.detach() / math.sqrt(alphas[-1])
    lam = None if cotangent is None else cotangent * math.sqrt(alphas[-1])
    grads = [torch.zeros_like(p) for p in params]
    for k in reversed(range(chain.steps)):
        h, scale = sigmas[k + 1] - sigmas[k], math.sqrt(alphas[k])
        with torch.no_grad():
            y_k = (y - h * chain.eps(scale * y, k, problem.cond)).requires_grad_(lam is not None)
        with torch.set_grad_enabled(lam is not None):
            f = chain.eps(scale * y_k, k, problem.cond)
        if lam is not None:
            vjps = torch.autograd.grad(f, [y_k, *params], lam, allow_unused=True)
            for total, part in zip(grads, vjps[1:]):
                if part is not None:
                    total += h * part
            lam = lam + h * vjps[0]
        y = y - h * f.detach()
    if problem.wrt == "latent" and lam is not None:
        grads[0] += lam / math.sqrt(alphas[0])
    return math.sqrt(alphas[0]) * y, grads


@dataclass
class Adjoint(Estimator):
    name = "adjoint"

    def gradient(self, problem, loss):
        if problem.chain.eta:
            raise NotApplicable(f"the adjoint solves the probability-flow ODE; it needs eta = 0, got {problem.chain.eta}")
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

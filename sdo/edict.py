"""EDICT's coupled, exactly invertible sampler (Wallace et al.), used by DOODL, over any chain
of affine steps.

Two sequences x, y start at the same latent; step k with the chain's coefficients (a, b) and
mixing p is

    x' = a x + b out(y),   y' = a y + b out(x'),
    x'' = p x' + (1 - p) y',   y'' = p y' + (1 - p) x''

and every line can be solved for its input, so the inputs of a step follow from its outputs
with two more network evaluations; the inversion is exact for any a != 0, so the coupling is
as exact for flow matching's Euler step (a = 1) as for DDIM's. The sample is x after the last
step. Deterministic single-step samplers only: the coupling pairs one state with one prediction.
"""

from __future__ import annotations

import torch

from sdo.conditioning import Cond
from sdo.samplers import Chain

DEFAULT_MIX = 0.93


def step(chain: Chain, x: torch.Tensor, y: torch.Tensor, k: int, cond: Cond, p: float = DEFAULT_MIX):
    c = chain.coefficients[k]
    x_inter = c.a * x + c.b * chain.predict(y, k, cond)
    y_inter = c.a * y + c.b * chain.predict(x_inter, k, cond)
    x_next = p * x_inter + (1 - p) * y_inter
    return x_next, p * y_inter + (1 - p) * x_next


def invert(chain: Chain, x: torch.Tensor, y: torch.Tensor, k: int, cond: Cond, p: float = DEFAULT_MIX):
    """The inputs (x, y) of step k from its outputs."""
    c = chain.coefficients[k]
    y_inter = (y - (1 - p) * x) / p
    x_inter = (x - (1 - p) * y_inter) / p
    y_prev = (y_inter - c.b * chain.predict(x_inter, k, cond)) / c.a
    return (x_inter - c.b * chain.predict(y_prev, k, cond)) / c.a, y_prev


def sample(chain: Chain, latent: torch.Tensor, cond: Cond, p: float = DEFAULT_MIX):
    """Both final sequences (x_T, y_T) of a run from `latent`; differentiable if grad is on."""
    x = y = chain.start(latent)
    for k in range(chain.steps):
        x, y = step(chain, x, y, k, cond, p)
    return x, y

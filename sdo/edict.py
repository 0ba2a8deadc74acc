"""EDICT's coupled, exactly invertible DDIM sampler (Wallace et al.), used by DOODL.

Two sequences x, y start at the same latent; step k with DDIM coefficients (c1, c2) and
mixing p is

    x' = c1 x + c2 eps(y),   y' = c1 y + c2 eps(x'),
    x'' = p x' + (1 - p) y',   y'' = p y' + (1 - p) x''

and every line can be solved for its input, so the inputs of a step follow from its outputs
with two more network evaluations. The sample is x after the last step.
"""

from __future__ import annotations

import torch

from sdo.chain import DDIMChain

DEFAULT_MIX = 0.93


def step(chain: DDIMChain, x: torch.Tensor, y: torch.Tensor, k: int, cond: torch.Tensor, p: float = DEFAULT_MIX):
    c1, c2, _ = chain.coefficients[k]
    x_inter = c1 * x + c2 * chain.eps(y, k, cond)
    y_inter = c1 * y + c2 * chain.eps(x_inter, k, cond)
    x_next = p * x_inter + (1 - p) * y_inter
    return x_next, p * y_inter + (1 - p) * x_next


def invert(chain: DDIMChain, x: torch.Tensor, y: torch.Tensor, k: int, cond: torch.Tensor, p: float = DEFAULT_MIX):
    """The inputs (x, y) of step k from its outputs."""
    c1, c2, _ = chain.coefficients[k]
    y_inter = (y - (1 - p) * x) / p
    x_inter = (x - (1 - p) * y_inter) / p
    y_prev = (y_inter - c2 * chain.eps(x_inter, k, cond)) / c1
    return (x_inter - c2 * chain.eps(y_prev, k, cond)) / c1, y_prev


def sample(chain: DDIMChain, latent: torch.Tensor, cond: torch.Tensor, p: float = DEFAULT_MIX):
    """Both final sequences (x_T, y_T) of a run from `latent`; differentiable if grad is on."""
    x = y = latent
    for k in range(chain.steps):
        x, y = step(chain, x, y, k, cond, p)
    return x, y

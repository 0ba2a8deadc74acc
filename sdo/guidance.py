"""Training-free guidance (DPS, FreeDoM, TFG): steer sampling along the reward gradient of x0_hat.

Rule: nothing is optimised. At each step k, eps_k = eps(z_k, t_k, c) is computed with a graph
to z_k, the loss is taken on the predicted sample x0_hat_k(z_k), and its gradient
g_k = d loss(x0_hat_k(z_k)) / d z_k moves the step's output, as DPS and FreeDoM do:

    z_{k+1} = c1_k z_k + c2_k eps_k (+ s_k noise_k)  -  rho_k g_k,    rho_k = scale * w_k

with w_k from `schedule`, the TFG benchmark's choices normalised to mean 1 over the T steps:
`constant` (w_k = 1), `increase` (w_k prop. to a_k / a_{k+1}, growing as sampling proceeds) or
`decrease` (w_k prop. to 1 - a_k / a_{k+1}). DPS's step zeta / ||y - A(x0_hat)|| on the squared
residual is the constant schedule on the loss ||y - A(x0_hat)|| with scale zeta / 2.
FreeDoM's time travel (`repeats` r > 1): after a guided step, z_{k+1} is re-noised back to
level k with fresh noise n from `generator`,
z_k = sqrt(a_k / a_{k+1}) z_{k+1} + sqrt(1 - a_k / a_{k+1}) n, and the step is redone, r
times in all; the last one is kept.
`loss` maps x0_hat (B, ...) to a scalar; with a sum of per-sample losses each sample moves
along its own gradient, with a mean every step is divided by B.
Cost: per step r forward + r backward network evaluations with a graph, T r of each per
guided sample, counted in `chain.meter`; autograd holds one step's graph.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sdo.chain import DDIMChain, Meter

SCHEDULES = ("constant", "increase", "decrease")


def schedule_weights(chain: DDIMChain, schedule: str) -> list[float]:
    """w_k for k = 0..T-1, normalised to mean 1."""
    if schedule not in SCHEDULES:
        raise ValueError(f"guidance schedule must be one of {SCHEDULES}, got {schedule!r}")
    ratios = [chain.alphas[k] / chain.alphas[k + 1] for k in range(chain.steps)]
    raw = {"constant": [1.0] * chain.steps, "increase": ratios, "decrease": [1 - r for r in ratios]}[schedule]
    return [w * len(raw) / sum(raw) for w in raw]


def guidance_gradient(chain: DDIMChain, z: torch.Tensor, k: int, cond: torch.Tensor, loss: Callable):
    """One network call with a graph to z_k: (eps_k, loss(x0_hat_k), d loss(x0_hat_k(z_k)) / d z_k),
    all detached."""
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        eps = chain.eps(z, k, cond.detach())
        value = loss(chain.predicted_sample(z, k, eps))
        (g,) = torch.autograd.grad(value, z)
    return eps.detach(), value.detach(), g


def guided_sample(
    chain: DDIMChain,
    latent: torch.Tensor,
    cond: torch.Tensor,
    loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: float,
    schedule: str = "constant",
    repeats: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """The guided sample z_T from `latent` and stats: network evaluations forward and backward
    (`chain.meter` is reset), and per step the loss on x0_hat and the norm of rho_k g_k, both
    from the step's last repeat."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if repeats > 1 and generator is None:
        raise ValueError("time travel (repeats > 1) draws fresh noise: pass a torch.Generator")
    rho = [scale * w for w in schedule_weights(chain, schedule)]
    meter = chain.meter = Meter()
    losses, moves = [], []
    z = latent.detach()
    for k in range(chain.steps):
        back = chain.alphas[k] / chain.alphas[k + 1]
        for r in range(repeats):
            if r:
                noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
                z = math.sqrt(back) * z_next + math.sqrt(1 - back) * noise
            eps, value, g = guidance_gradient(chain, z, k, cond, loss)
            z_next = chain.update(z, k, eps) - rho[k] * g
        losses.append(float(value))
        moves.append(float((rho[k] * g).norm()))
        z = z_next
    return z, {"nfe_forward": meter.forward, "nfe_backward": meter.backward, "loss": losses, "move_norm": moves}

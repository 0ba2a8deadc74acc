"""Training-free guidance (DPS, FreeDoM, TFG): steer sampling along the reward gradient of x0_hat.

Rule: nothing is optimised. At each step k, out_k = out(z_k, t_k, c) is computed with a graph
to z_k, the loss is taken on the predicted sample x0_hat_k(z_k) = p_k z_k + q_k out_k, and
its gradient g_k = d loss(x0_hat_k(z_k)) / d z_k moves the step's output, as DPS and FreeDoM do:

    z_{k+1} = a_k z_k + b_k out_k (+ s_k noise_k)  -  rho_k g_k,    rho_k = scale * w_k

with w_k from `schedule`, the TFG benchmark's choices normalised to mean 1 over the T steps:
`constant` (w_k = 1), `increase` (w_k prop. to r_k = abar_k / abar_{k+1}, with abar = alpha^2 /
(alpha^2 + n^2) the signal share of a state's variance, growing as sampling proceeds) or
`decrease` (w_k prop. to 1 - r_k). DPS's
step zeta / ||y - A(x0_hat)|| on the squared residual is the constant schedule on the loss
||y - A(x0_hat)|| with scale zeta / 2.
FreeDoM's time travel (`repeats` r > 1): after a guided step, z_{k+1} is re-noised back to
level k with fresh noise n from `generator`,
z_k = (alpha_k / alpha_{k+1}) z_{k+1} + sqrt(n_k^2 - (alpha_k / alpha_{k+1})^2 n_{k+1}^2) n,
and the step is redone, r times in all; the last one is kept.
`loss` maps x0_hat (B, ...) to a scalar; with a sum of per-sample losses each sample moves
along its own gradient, with a mean every step is divided by B. Works on every sampler (a
multistep solver's earlier pairs are the guided states and their predictions).
Cost: per step r forward + r backward network evaluations with a graph, T r of each per
guided sample, counted in `chain.meter`; autograd holds one step's graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sdo.conditioning import Cond
from sdo.samplers import Chain, Meter

SCHEDULES = ("constant", "increase", "decrease")


def _renoise_ratio(chain: Chain, k: int) -> float:
    """(alpha_k / alpha_{k+1})^2: how much of state k+1's signal state k keeps."""
    return (chain.levels[k][0] / chain.levels[k + 1][0]) ** 2


def _signal_fraction(chain: Chain, k: int) -> float:
    """abar_k = alpha_k^2 / (alpha_k^2 + n_k^2): the share of state k's variance that is signal,
    whatever the sampler's parametrisation (variance-preserving, flow, or Euler's exploding one)."""
    alpha, noise = chain.levels[k]
    return alpha**2 / (alpha**2 + noise**2)


def schedule_weights(chain: Chain, schedule: str) -> list[float]:
    """w_k for k = 0..T-1, normalised to mean 1."""
    if schedule not in SCHEDULES:
        raise ValueError(f"guidance schedule must be one of {SCHEDULES}, got {schedule!r}")
    ratios = [_signal_fraction(chain, k) / _signal_fraction(chain, k + 1) for k in range(chain.steps)]
    raw = {"constant": [1.0] * chain.steps, "increase": ratios, "decrease": [1 - r for r in ratios]}[schedule]
    return [w * len(raw) / sum(raw) for w in raw]


def guidance_gradient(chain: Chain, z: torch.Tensor, k: int, cond: Cond, loss: Callable):
    """One network call with a graph to z_k: (out_k, loss(x0_hat_k), d loss(x0_hat_k(z_k)) / d z_k),
    all detached."""
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        out = chain.predict(z, k, cond)
        value = loss(chain.predicted_sample(z, k, out))
        (g,) = torch.autograd.grad(value, z)
    return out.detach(), value.detach(), g


def guided_sample(
    chain: Chain,
    latent: torch.Tensor,
    cond: Cond,
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
    losses, moves, earlier = [], [], chain.past
    z = chain.start(latent.detach())
    for k in range(chain.steps):
        keep = _renoise_ratio(chain, k)
        fresh = math.sqrt(max(chain.levels[k][1] ** 2 - keep * chain.levels[k + 1][1] ** 2, 0.0))
        z_next = z
        for r in range(repeats):
            if r:
                noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
                z = math.sqrt(keep) * z_next + fresh * noise
            out, value, g = guidance_gradient(chain, z, k, cond, loss)
            z_next, following = chain.advance(z, k, out, earlier)
            z_next = z_next - rho[k] * g
        losses.append(float(value))
        moves.append(float((rho[k] * g).norm()))
        z, earlier = z_next, following
    return z, {"nfe_forward": meter.forward, "nfe_backward": meter.backward, "loss": losses, "move_norm": moves}

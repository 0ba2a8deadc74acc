"""DDIM (Song et al.): the deterministic (eta = 0) or stochastic sampler of noise-predicting
models, as diffusers' `DDIMScheduler` runs it.

Notation (`sdo.samplers.base`, then the DDIM paper's):

    abar_k       alphas_cumprod[t_k]       (alpha-bar_t; after the last step abar_T = alphas_cumprod[0])
    out_k        eps_theta(z_k, t_k, c)    (the predicted noise)
    sigma_k      sqrt((1 - abar_k) / abar_k)  (noise-to-signal ratio: the time of the exponential-
                                            integrator form of the probability-flow ODE)
    eta          DDIM's stochasticity       (0: deterministic DDIM)
    s_k          eta * sqrt((1 - abar_{k+1}) / (1 - abar_k) * (1 - abar_k / abar_{k+1}))
                                           (sigma_t of the DDIM paper: step k's noise)

Step k re-noises the predicted clean sample to level k+1:

    a_k = sqrt(abar_{k+1} / abar_k),   b_k = sqrt(1 - abar_{k+1} - s_k^2) - sqrt(abar_{k+1} (1 - abar_k) / abar_k)
    p_k = 1 / sqrt(abar_k),            q_k = -sqrt(1 - abar_k) / sqrt(abar_k)
    alpha_k = sqrt(abar_k),            n_k = sqrt(1 - abar_k)

With eta = 0 this is the Euler step of y = z / sqrt(abar) in sigma, y_{k+1} = y_k + (sigma_{k+1} -
sigma_k) eps, the form the adjoint and the shortcut's fixed-point view use. The coefficients
are computed in float64 from the scheduler's `alphas_cumprod` (which diffusers keeps in float32).
"""

from __future__ import annotations

import math

from diffusers import DDIMScheduler

from sdo.samplers.base import Chain, Step
from sdo.samplers.registry import register_sampler


@register_sampler
class DDIM(Chain):
    name = "ddim"
    stochastic = True

    def __init__(self, net, steps: int, scheduler_config: dict, cfg_scale: float = 1.0, null_cond=None, eta: float = 0.0):
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.scheduler_config, self.eta = dict(scheduler_config), eta
        self._steps = steps
        scheduler = self.diffusers_scheduler()
        timesteps = scheduler.timesteps.tolist()
        cumprod = scheduler.alphas_cumprod.double()
        abar = [float(cumprod[t]) for t in timesteps + [0]]
        coefficients = []
        for k in range(steps):
            now, after = abar[k], abar[k + 1]
            s = eta * math.sqrt((1 - after) / (1 - now) * (1 - now / after))
            coefficients.append(Step(
                a=math.sqrt(after / now),
                b=math.sqrt(1 - after - s**2) - math.sqrt(after * (1 - now) / now),
                s=s,
                p=1 / math.sqrt(now),
                q=-math.sqrt(1 - now) / math.sqrt(now),
            ))
        levels = [(math.sqrt(x), math.sqrt(1 - x)) for x in abar]
        super().__init__(net, timesteps, coefficients, levels, cfg_scale, null_cond)
        self.alphas = abar

    def diffusers_scheduler(self) -> DDIMScheduler:
        scheduler = DDIMScheduler(**self.scheduler_config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        scheduler.set_timesteps(self._steps)
        return scheduler

    @property
    def sigmas(self) -> list[float]:
        """sigma_k at each state k = 0..T."""
        return [math.sqrt((1 - x) / x) for x in self.alphas]

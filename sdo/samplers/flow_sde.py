"""A stochastic form of flow matching's Euler step, as Flow-GRPO (Liu et al., 2025) samples SD3
and FLUX (its `sde_step_with_logprob`, sde_type "sde"), over the sigmas of `flow_euler`.

Notation (`sdo.samplers.base` and `sdo.samplers.flow_euler`: z_k ~ (1 - sigma_k) x_0 + sigma_k noise,
out_k the predicted velocity v), then Flow-GRPO's (their t is sigma):

    a            the noise level (option `noise_level`, Flow-GRPO's default 0.7; 0: the ODE)
    g_k          a sqrt(sigma_k / (1 - sigma_k)), the diffusion coefficient; where sigma_k = 1
                 exactly (the first step of SD3 and FLUX) the denominator takes sigma_1, the
                 schedule's second sigma, in place of sigma_k, as their code does
    dt_k         sigma_{k+1} - sigma_k (negative)

Step k is Euler-Maruyama on the reverse SDE whose drift adds the score term to the velocity
(the score of the linear interpolant is -(z + (1 - sigma) v) / sigma):

    z_{k+1} = z_k + [v_k + g_k^2 / (2 sigma_k) (z_k + (1 - sigma_k) v_k)] dt_k + g_k sqrt(-dt_k) noise_k
    a_k = 1 + g_k^2 dt_k / (2 sigma_k),   b_k = (1 + g_k^2 (1 - sigma_k) / (2 sigma_k)) dt_k,
    s_k = g_k sqrt(-dt_k),   p_k = 1,   q_k = -sigma_k,   alpha_k = 1 - sigma_k,   n_k = sigma_k

Every step draws noise, the last one included (Flow-GRPO's sampler does the same); the noise is
drawn once per run (`fix_noise`). In continuous time this SDE has the probability-flow ODE's
marginals for any g (the score term is what Fokker-Planck asks of the added diffusion), so with
an exact velocity both sample the data distribution; on a finite grid each has its own
discretisation error. On data N(0.5, 0.3^2), whose velocity is affine in z (so every state is
Gaussian and the chain's law is exact), the SDE's variance is off by -6%, -0.9%, +0.1% at T = 20,
80, 320 (linear sigmas), the ODE's by -18%, -4.7%, -1.2%; beyond that the SDE's error shrinks
slowly (+0.2% at T = 640, +0.14% at 5120): near sigma = 1 the coefficient g^2 ~ a^2 / (1 - sigma)
is singular, so the first steps add noise of order a whatever T. The
sigmas, the timesteps and the model's `schedule` (mu, sigmas) are exactly `flow_euler`'s; there
is no diffusers scheduler for this step, so `diffusers_scheduler` gives the flow-matching Euler
scheduler of the same schedule (its `step` is the ODE's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffusers import FlowMatchEulerDiscreteScheduler

from sdo.samplers.base import Capabilities, Chain, Step
from sdo.samplers.flow_euler import flow_scheduler
from sdo.samplers.registry import register_sampler


def flow_sde_step(sigma: float, after: float, second: float, noise_level: float) -> Step:
    """The step from `sigma` to `after`; `second` is the schedule's second sigma (used where sigma = 1)."""
    dt = after - sigma
    g2 = noise_level**2 * sigma / (1 - (second if sigma == 1 else sigma))
    return Step(
        a=1 + g2 * dt / (2 * sigma), b=(1 + g2 * (1 - sigma) / (2 * sigma)) * dt, p=1.0, q=-sigma, s=math.sqrt(g2 * -dt)
    )


@register_sampler
class FlowSDE(Chain):
    name = "flow_sde"
    scheduler_class = ""  # no diffusers scheduler runs this step: never a pipeline's default
    process = "flow"

    @dataclass
    class Options:
        """`noise_level`: Flow-GRPO's a >= 0, the diffusion coefficient a sqrt(sigma / (1 - sigma)) (0: the ODE)."""

        noise_level: float = 0.7

        def __post_init__(self):
            if not (math.isfinite(self.noise_level) and self.noise_level >= 0):
                raise ValueError(f"flow_sde noise_level must be a finite number >= 0, got {self.noise_level}")

    def __init__(
        self,
        net,
        steps: int,
        scheduler_config: dict,
        cfg_scale: float = 1.0,
        null_cond=None,
        options: Options | None = None,
        schedule: dict | None = None,
    ):
        self.schedule = schedule or {}
        scheduler = self.scheduler_for(steps, scheduler_config, options)
        sigma = [float(x) for x in scheduler.sigmas.double()]
        if sigma[1] == 1:
            raise ValueError(
                "flow_sde needs the schedule's second sigma below 1 (the diffusion coefficient at "
                f"sigma = 1 takes it in place of sigma), got sigmas {sigma[:2]}"
            )
        noise = self.options.noise_level
        coefficients = [flow_sde_step(sigma[k], sigma[k + 1], sigma[1], noise) for k in range(steps)]
        super().__init__(
            net, scheduler.timesteps.tolist(), coefficients, [(1 - x, x) for x in sigma], cfg_scale, null_cond
        )
        self.sigmas = sigma

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        deterministic = options is not None and options.noise_level == 0
        return Capabilities(
            deterministic=deterministic,
            order=1,
            invertible=deterministic,
            inversion=False,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return flow_scheduler(self.scheduler_config, self._steps, self.schedule)

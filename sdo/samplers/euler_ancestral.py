"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`), as diffusers'
`EulerAncestralDiscreteScheduler` runs it, for noise- and v-predicting models.

Notation (`sdo.samplers.base` and `sdo.samplers.euler`: the state z_k ~ x_0 + sigma_k noise,
c_k = 1 / sqrt(sigma_k^2 + 1), x0_hat = p_k z_k + q_k out_k), then the ancestral step's:

    sigma_up_k    sigma_{k+1} sqrt(1 - sigma_{k+1}^2 / sigma_k^2)   (the fresh noise)
    sigma_down_k  sqrt(sigma_{k+1}^2 - sigma_up_k^2)                (where the Euler step goes)

Step k is an Euler step down to sigma_down_k, then fresh noise up to sigma_{k+1}:

    z_{k+1} = z_k + (sigma_down_k - sigma_k) / sigma_k (z_k - x0_hat_k) + sigma_up_k noise_k
    a_k = 1 + d_k (1 - p_k),   b_k = -d_k q_k,   s_k = sigma_up_k,   d_k = (sigma_down_k - sigma_k) / sigma_k
    alpha_k = 1,   n_k = sigma_k

The noise is drawn once per run (`fix_noise`); given the same noise the update equals the
scheduler's `step` (which draws it with `randn_tensor`). Timesteps and sigmas are the scheduler's
own (`timestep_spacing`, `steps_offset`; this scheduler has no Karras spacing), z_0 = r * latent
with r = init_noise_sigma. The scheduler computes in float32, so a float64 chain agrees with it
to float32 round-off. diffusers does not implement a sample prediction here; neither does this.
"""

from __future__ import annotations

import math

from diffusers import EulerAncestralDiscreteScheduler

from sdo.samplers.base import Capabilities, Chain, Step, scheduler_from
from sdo.samplers.euler import Euler, euler_step, ve_prediction
from sdo.samplers.registry import register_sampler


@register_sampler
class EulerAncestral(Euler):
    """Euler's chain with the ancestral step's coefficients and fresh noise."""

    name = "euler_ancestral"
    scheduler_class = "EulerAncestralDiscreteScheduler"
    predictions = ("epsilon", "v_prediction")
    Options = Chain.Options

    def updates(self, prediction: str, sigma: list[float]) -> list[Step]:
        """An Euler step down to sigma_down_k, then noise of scale sigma_up_k, per step."""
        coefficients = []
        for now, after in zip(sigma, sigma[1:]):
            up = math.sqrt(after**2 * (now**2 - after**2) / now**2)
            down = math.sqrt(after**2 - up**2)
            coefficients.append(euler_step(*ve_prediction(prediction, now), now, down, s=up))
        return coefficients

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        return Capabilities(
            deterministic=False,
            order=1,
            invertible=False,
            inversion=False,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> EulerAncestralDiscreteScheduler:
        scheduler = scheduler_from(EulerAncestralDiscreteScheduler, self.scheduler_config)
        scheduler.set_timesteps(self._steps)
        return scheduler

"""Flow matching's Euler sampler (rectified flow; SD3, FLUX), as diffusers'
`FlowMatchEulerDiscreteScheduler` runs it.

Notation (`sdo.samplers.base`, then the flow-matching papers'):

    sigma_k      the noise level of state k   (z = (1 - sigma) x_0 + sigma noise; sigma_0 near 1,
                                               sigma_T = 0 after the last step)
    t_k          sigma_k * num_train_timesteps (the scheduler's `timesteps`; a model may rescale
                                               them, FLUX divides by 1000)
    out_k        v_theta(z_k, t_k, c)         (the predicted velocity, noise - x_0)

The sigmas come from the scheduler exactly as a pipeline sets them: `linspace` between the
training schedule's ends, a static `shift` (sigma' = s sigma / (1 + (s - 1) sigma)) or, with
`use_dynamic_shifting`, the time shift of `mu` (FLUX: from the image's sequence length), an
optional `shift_terminal` stretch, or the pipeline's own `sigmas` (`linear_sigmas`: FLUX's
linspace(1, 1/T, T)); then sigma_T = 0 is appended. Step k is Euler's:

    a_k = 1,   b_k = sigma_{k+1} - sigma_k,   s_k = 0
    p_k = 1,   q_k = -sigma_k                (x0_hat = z - sigma v)
    alpha_k = 1 - sigma_k,   n_k = sigma_k

so the inverse of a step is z_k = z_{k+1} - b_k v(z_k): the adjoint rebuilds states by it. The
coefficients are float64 copies of the scheduler's float32 sigmas (its `step` also computes in
float32: a float64 chain agrees with it to about 1e-7).
"""

from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler

from sdo.samplers.base import Chain, Step
from sdo.samplers.registry import register_sampler


@register_sampler
class FlowMatchEuler(Chain):
    name = "flow_euler"

    def __init__(
        self,
        net,
        steps: int,
        scheduler_config: dict,
        cfg_scale: float = 1.0,
        null_cond=None,
        eta: float = 0.0,
        mu: float | None = None,
        sigmas: list[float] | None = None,
        linear_sigmas: bool = False,
    ):
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if eta:
            raise ValueError(f"flow_euler is deterministic; eta applies to ddim only, got eta={eta}")
        if scheduler_config.get("stochastic_sampling"):
            raise ValueError("flow_euler takes the deterministic Euler step; stochastic_sampling is not supported")
        self.scheduler_config, self.mu, self._steps = dict(scheduler_config), mu, steps
        if linear_sigmas:  # FluxPipeline's own sigmas for any T
            sigmas = np.linspace(1.0, 1 / steps, steps).tolist()
        self._sigmas = None if sigmas is None else list(sigmas)
        scheduler = self.diffusers_scheduler()
        sigma = [float(x) for x in scheduler.sigmas.double()]
        coefficients = [Step(a=1.0, b=sigma[k + 1] - sigma[k], s=0.0, p=1.0, q=-sigma[k]) for k in range(steps)]
        levels = [(1 - x, x) for x in sigma]
        super().__init__(net, scheduler.timesteps.tolist(), coefficients, levels, cfg_scale, null_cond)
        self.sigmas = sigma

    def diffusers_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        scheduler = FlowMatchEulerDiscreteScheduler(**self.scheduler_config)
        options = {"mu": self.mu} if self.mu is not None else {}
        if self._sigmas is not None:
            scheduler.set_timesteps(sigmas=self._sigmas, **options)
        else:
            scheduler.set_timesteps(self._steps, **options)
        if len(scheduler.timesteps) != self._steps:
            raise ValueError(f"{len(scheduler.timesteps)} sigmas given for {self._steps} steps")
        return scheduler

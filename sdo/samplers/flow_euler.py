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
`use_dynamic_shifting`, the time shift of `mu` (FLUX and SD3 from the image's sequence length),
an optional `shift_terminal` stretch, or the pipeline's own `sigmas` (FLUX's linspace(1, 1/T,
T)); the model passes `mu` and `sigmas` as its `schedule`. Then sigma_T = 0 is appended.
Step k is Euler's:

    a_k = 1,   b_k = sigma_{k+1} - sigma_k,   s_k = 0
    p_k = 1,   q_k = -sigma_k                (x0_hat = z - sigma v)
    alpha_k = 1 - sigma_k,   n_k = sigma_k

so the inverse of a step is z_k = z_{k+1} - b_k v(z_k): the adjoint rebuilds states by it, and
`inversion` runs the steps backwards from a clean image. The coefficients are float64 copies of
the scheduler's float32 sigmas (its `step` also computes in float32: a float64 chain agrees
with it to about 1e-7).
"""

from __future__ import annotations

from diffusers import FlowMatchEulerDiscreteScheduler

from sdo.samplers.base import Capabilities, Chain, Step, scheduler_from
from sdo.samplers.registry import register_sampler


def flow_scheduler(config: dict, steps: int, schedule: dict) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler of `config` set to `steps`, with the model's `mu` and
    `sigmas` where given."""
    if config.get("stochastic_sampling"):
        raise ValueError("stochastic_sampling is not an affine step here; use the flow_sde sampler instead")
    scheduler = scheduler_from(FlowMatchEulerDiscreteScheduler, config)
    options = {"mu": schedule["mu"]} if schedule.get("mu") is not None else {}
    if schedule.get("sigmas") is not None:
        scheduler.set_timesteps(sigmas=list(schedule["sigmas"]), **options)
    else:
        scheduler.set_timesteps(steps, **options)
    if len(scheduler.timesteps) != steps:
        raise ValueError(f"{len(scheduler.timesteps)} sigmas given for {steps} steps")
    return scheduler


@register_sampler
class FlowMatchEuler(Chain):
    name = "flow_euler"
    scheduler_class = "FlowMatchEulerDiscreteScheduler"
    process = "flow"

    def __init__(
        self,
        net,
        steps: int,
        scheduler_config: dict,
        cfg_scale: float = 1.0,
        null_cond=None,
        options=None,
        schedule: dict | None = None,
    ):
        self.schedule = schedule or {}
        scheduler = self.scheduler_for(steps, scheduler_config, options)
        sigma = [float(x) for x in scheduler.sigmas.double()]
        coefficients = [Step(a=1.0, b=sigma[k + 1] - sigma[k], p=1.0, q=-sigma[k]) for k in range(steps)]
        levels = [(1 - x, x) for x in sigma]
        super().__init__(net, scheduler.timesteps.tolist(), coefficients, levels, cfg_scale, null_cond)
        self.sigmas = sigma

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        return Capabilities(
            deterministic=True,
            order=1,
            invertible=True,
            inversion=True,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return flow_scheduler(self.scheduler_config, self._steps, self.schedule)

    def inversion(self, steps: int) -> Chain:
        """The first `steps` steps of the Euler step run backwards from a clean image: along the
        reversed sigmas 0 = sigma_T < sigma_{T-1} < ..., each step z' = z + (sigma' - sigma) v(z)
        with the network called at the state it starts from, conditioned and without guidance.
        The states end at sigma_{T-steps}, not at this chain's sigma_steps (the SDO authors'
        editing script denoises from the latter all the same)."""
        sigma, times = self.sigmas[::-1], [0.0, *self.timesteps[::-1]]
        coefficients = [Step(a=1.0, b=sigma[j + 1] - sigma[j], p=1.0, q=-sigma[j]) for j in range(steps)]
        levels = [(1 - x, x) for x in sigma[: steps + 1]]
        chain = Chain(self.net, times[:steps], coefficients, levels)  # inverted as conditioned, without guidance
        chain.options, chain.scheduler_config, chain.name = (
            self.options,
            self.scheduler_config,
            f"{self.name} inversion",
        )
        return chain

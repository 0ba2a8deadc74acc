"""Euler's method on the probability-flow ODE in sigma (Karras et al.'s "Euler" sampler), as
diffusers' `EulerDiscreteScheduler` runs it, for noise- and v-predicting models.

Notation (`sdo.samplers.base`, then Karras et al.'s):

    sigma_k      the noise level of state k, sqrt((1 - abar) / abar) interpolated at t_k (or Karras,
                 exponential, beta spacing), sigma_T = 0 (or sigma_min, `final_sigmas_type`)
    z_k          the scheduler's own sample x_k ~ x_0 + sigma_k noise (variance exploding: the
                 diffusion state times sqrt(1 + sigma^2)); z_0 = r * latent with r = init_noise_sigma
    c_k          1 / sqrt(sigma_k^2 + 1)               (`scale_model_input`: the network sees the
                                                         variance-preserving state)
    p_k, q_k     x0_hat = p_k z_k + q_k out_k          (noise: 1, -sigma_k;
                                                        v: 1 / (sigma_k^2 + 1), -sigma_k c_k)
    d_k          (sigma_{k+1} - sigma_k) / sigma_k

Step k is Euler's along dz/dsigma = (z - x0_hat) / sigma:

    z_{k+1} = z_k + d_k (z_k - x0_hat_k),   a_k = 1 + d_k (1 - p_k),   b_k = -d_k q_k,   s_k = 0
    alpha_k = 1,   n_k = sigma_k

For a noise prediction this is z_{k+1} = z_k + (sigma_{k+1} - sigma_k) eps_k, DDIM's step in the
same coordinates. Timesteps and sigmas are the scheduler's own after `set_timesteps`
(`timestep_spacing`, `steps_offset`, `interpolation_type`, `use_karras_sigmas`, also as this
sampler's option, which overrides the configuration and, when on, turns the exponential and beta
spacings off), copied to float64; its `step` computes in
float32, so a float64 chain agrees with it to float32 round-off. `s_churn` > 0 is refused:
diffusers adds that noise after the network call, so the step's predicted sample would carry it
(p_k, q_k cannot), and it is not Karras's churn (whose network sees the raised level). A sample
prediction is refused where the last step goes to sigma 0 (it would discard its state, a_k = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffusers import EulerDiscreteScheduler

from sdo.samplers.base import Capabilities, Chain, Step, scheduler_from, vp_prediction
from sdo.samplers.registry import register_sampler

SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def sigma_overrides(use_karras_sigmas: bool | None, others: tuple[str, ...] = SPACINGS[1:]) -> dict:
    """The scheduler settings of a `use_karras_sigmas` option: nothing for None (the
    configuration's), else Karras spacing on or off, with the other spacings off when it is on."""
    if use_karras_sigmas is None:
        return {}
    return {"use_karras_sigmas": use_karras_sigmas, **({name: False for name in others} if use_karras_sigmas else {})}


@dataclass
class SigmaSpacing:
    """`use_karras_sigmas`: Karras et al.'s sigma spacing (None: as the scheduler configuration says)."""

    use_karras_sigmas: bool | None = None


def ve_prediction(prediction_type: str, sigma: float) -> tuple[float, float]:
    """(p, q) of x0_hat = p z + q out for a state z ~ x_0 + sigma noise whose network sees
    z / sqrt(sigma^2 + 1)."""
    scale = 1 / math.sqrt(sigma**2 + 1)
    _, (x0_y, x0_out) = vp_prediction(prediction_type, scale, sigma * scale)
    return x0_y * scale, x0_out


def euler_step(p: float, q: float, sigma: float, after: float, s: float = 0.0) -> Step:
    """The Euler step from level `sigma` to `after` given x0_hat = p z + q out (noise std `s`)."""
    d = (after - sigma) / sigma
    return Step(a=1 + d * (1 - p), b=-d * q, p=p, q=q, s=s, c=1 / math.sqrt(sigma**2 + 1))


def refuse_discarding(name: str, prediction_type: str, coefficients: list[Step]) -> None:
    if any(step.a == 0 for step in coefficients):
        raise ValueError(
            f"{name} refuses prediction_type={prediction_type!r} with a final sigma of 0: its last step "
            "discards the state (a_k = 0); use final_sigmas_type='sigma_min' or another prediction type"
        )


@register_sampler
class Euler(Chain):
    name = "euler"
    scheduler_class = "EulerDiscreteScheduler"
    process = "diffusion"
    predictions = ("epsilon", "v_prediction", "sample")

    @dataclass
    class Options(SigmaSpacing):
        """`SigmaSpacing`, and `s_churn`: EulerDiscreteScheduler's churn, 0 only (see the module docstring)."""

        s_churn: float = 0.0

        def __post_init__(self):
            if self.s_churn != 0:
                raise ValueError(
                    f"euler s_churn must be 0, got {self.s_churn}: diffusers adds the churn noise after "
                    "the network call, so the predicted sample would carry it; use euler_ancestral or "
                    "ddim with eta > 0 for a stochastic sampler"
                )

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
        scheduler = self.scheduler_for(steps, scheduler_config, options)
        prediction = scheduler.config.prediction_type
        if prediction not in self.predictions:
            raise ValueError(f"{self.name} takes prediction_type {' or '.join(self.predictions)}, got {prediction!r}")
        sigma = [float(x) for x in scheduler.sigmas.double()]
        coefficients = self.updates(prediction, sigma)
        super().__init__(
            net,
            scheduler.timesteps.tolist(),
            coefficients,
            [(1.0, x) for x in sigma],
            cfg_scale,
            null_cond,
            initial_scale=float(scheduler.init_noise_sigma),
        )
        self.sigmas = sigma

    def updates(self, prediction: str, sigma: list[float]) -> list[Step]:
        """The T steps along the scheduler's sigmas."""
        coefficients = [euler_step(*ve_prediction(prediction, now), now, after) for now, after in zip(sigma, sigma[1:])]
        refuse_discarding(self.name, prediction, coefficients)
        return coefficients

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        return Capabilities(
            deterministic=True,
            order=1,
            invertible=True,
            inversion=False,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> EulerDiscreteScheduler:
        scheduler = scheduler_from(
            EulerDiscreteScheduler, self.scheduler_config, **sigma_overrides(self.options.use_karras_sigmas)
        )
        scheduler.set_timesteps(self._steps)
        return scheduler

"""DDIM (Song et al.): the deterministic (eta = 0) or stochastic sampler, as diffusers'
`DDIMScheduler` runs it, for noise-, v- and sample-predicting models.

Notation (`sdo.samplers.base`, then the DDIM paper's):

    abar_k       alphas_cumprod[t_k], the level the network is called at
    abar'_k      alphas_cumprod[t_k - N/T] (N = num_train_timesteps), the level step k goes to
                 (`final_alpha_cumprod` past the start: 1 with `set_alpha_to_one`, else
                 alphas_cumprod[0])
    eps_k, x0_k  the predicted noise and clean sample, linear in (z_k, out_k) by the model's
                 `prediction_type` (`vp_prediction`)
    eta          DDIM's stochasticity (0: deterministic DDIM)
    s_k          eta * sqrt((1 - abar'_k) / (1 - abar_k) * (1 - abar_k / abar'_k))

Step k re-noises the predicted clean sample to level abar'_k:

    z_{k+1} = sqrt(abar'_k) x0_k + sqrt(1 - abar'_k - s_k^2) eps_k + s_k noise_k

so a_k, b_k, p_k, q_k follow from the prediction's coefficients; for a noise prediction
a_k = sqrt(abar'_k / abar_k), b_k = sqrt(1 - abar'_k - s_k^2) - sqrt(abar'_k (1 - abar_k) / abar_k).
With eta = 0 this is the Euler step of y = z / sqrt(abar) in sigma = sqrt((1 - abar) / abar),
y_{k+1} = y_k + (sigma'_k - sigma_k) eps, the form the adjoint and the shortcut's fixed-point
view use. The schedule is read from the model's scheduler configuration (betas, spacing,
`steps_offset`, `set_alpha_to_one`, `rescale_betas_zero_snr`, `prediction_type`); clipping or
thresholding the predicted sample is refused, since it is not affine. The coefficients are
computed in float64 from the scheduler's `alphas_cumprod` (which diffusers keeps in float32).
Inversion (`inversion`) runs the steps backwards as `DDIMInverseScheduler` does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from diffusers import DDIMScheduler

from sdo.samplers.base import (
    Capabilities,
    Chain,
    Step,
    scheduler_from,
    vp_prediction,
)
from sdo.samplers.registry import register_sampler


def ddim_step(now: float, after: float, prediction_type: str, eta: float = 0.0) -> Step:
    """The step from level abar = `now` to abar' = `after`."""
    s = eta * math.sqrt((1 - after) / (1 - now) * (1 - now / after)) if eta else 0.0
    (eps_z, eps_out), (x0_z, x0_out) = vp_prediction(prediction_type, math.sqrt(now), math.sqrt(1 - now))
    direction = math.sqrt(max(1 - after - s**2, 0.0))
    signal = math.sqrt(after)
    return Step(a=signal * x0_z + direction * eps_z, b=signal * x0_out + direction * eps_out, p=x0_z, q=x0_out, s=s)


@register_sampler
class DDIM(Chain):
    name = "ddim"
    scheduler_class = "DDIMScheduler"
    process = "diffusion"

    @dataclass
    class Options:
        """`eta`: DDIM's stochasticity in [0, 1] (0: deterministic)."""

        eta: float = 0.0

        def __post_init__(self):
            if not 0 <= self.eta <= 1:
                raise ValueError(f"ddim eta must lie in [0, 1], got {self.eta}")

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
        why = "clipping the predicted sample is not affine, so no estimator's rule holds; sample without it"
        refused = (("clip_sample", True, why), ("thresholding", True, why))
        scheduler = self.scheduler_for(steps, scheduler_config, options, refused)
        prediction = scheduler.config.prediction_type
        cumprod, stride = scheduler.alphas_cumprod.double(), scheduler.config.num_train_timesteps // steps
        final = float(scheduler.final_alpha_cumprod)
        timesteps = [int(t) for t in scheduler.timesteps]
        now = [float(cumprod[t]) for t in timesteps]
        after = [float(cumprod[t - stride]) if t - stride >= 0 else final for t in timesteps]
        coefficients = [ddim_step(n, a, prediction, self.options.eta) for n, a in zip(now, after)]
        levels = [(math.sqrt(x), math.sqrt(1 - x)) for x in [*now, after[-1]]]
        super().__init__(net, timesteps, coefficients, levels, cfg_scale, null_cond)
        self.alphas_cumprod = [*now, after[-1]]

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        deterministic = not (options and options.eta)
        return Capabilities(
            deterministic=deterministic,
            order=1,
            invertible=deterministic,
            inversion=True,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> DDIMScheduler:
        scheduler = scheduler_from(DDIMScheduler, self.scheduler_config)
        scheduler.set_timesteps(self._steps)
        return scheduler

    def inversion(self, steps: int) -> Chain:
        """The first `steps` steps of DDIM inversion over this chain's T, as diffusers'
        `DDIMInverseScheduler.step` runs them: from a clean image's latent (at the inverse
        scheduler's `initial_alpha_cumprod`) up the levels of the reversed timesteps, each step
        calling the network at the level it goes to, conditioned and without guidance. The
        states end at the level of inverse timestep `steps` - 1, not at this chain's level at
        `steps`: the SDO authors' editing script denoises from the latter all the same."""
        from diffusers import DDIMInverseScheduler

        inverse = scheduler_from(DDIMInverseScheduler, self.scheduler_config)
        inverse.set_timesteps(self._steps)
        prediction, cumprod = inverse.config.prediction_type, inverse.alphas_cumprod.double()
        stride = inverse.config.num_train_timesteps // self._steps
        coefficients, levels, timesteps = [], [], []
        for t in [int(t) for t in inverse.timesteps[:steps]]:
            source = t - stride
            now = float(cumprod[source]) if source >= 0 else float(inverse.initial_alpha_cumprod)
            after = float(cumprod[t])
            # the network is called at the target level t on the source state
            (eps_z, eps_out), (x0_z, x0_out) = vp_prediction(prediction, math.sqrt(now), math.sqrt(1 - now))
            signal, direction = math.sqrt(after), math.sqrt(1 - after)
            coefficients.append(
                Step(a=signal * x0_z + direction * eps_z, b=signal * x0_out + direction * eps_out, p=x0_z, q=x0_out)
            )
            levels.append((math.sqrt(now), math.sqrt(1 - now)))
            timesteps.append(t)
        levels.append((math.sqrt(after), math.sqrt(1 - after)))
        chain = Chain(self.net, timesteps, coefficients, levels)  # inverted as conditioned, without guidance
        chain.options, chain.scheduler_config = dataclasses.replace(self.options, eta=0.0), self.scheduler_config
        chain.name = f"{self.name} inversion"
        return chain

    @property
    def sigmas(self) -> list[float]:
        """sigma_k = sqrt((1 - abar_k) / abar_k) at each state k = 0..T."""
        return [math.sqrt((1 - x) / x) for x in self.alphas_cumprod]

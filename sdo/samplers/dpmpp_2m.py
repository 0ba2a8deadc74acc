"""DPM-Solver++ 2M (Lu et al.), the multistep second-order solver of the probability-flow ODE in
its data-prediction form, as diffusers' `DPMSolverMultistepScheduler` runs it with
algorithm_type "dpmsolver++" and solver_order 2, for noise-, v- and sample-predicting models.

Notation (`sdo.samplers.base`, then the DPM-Solver++ paper's):

    sigma_k      sqrt((1 - abar) / abar) at state k, as the scheduler spaces them (timestep_spacing,
                 Karras / exponential / beta / Lu spacing; `use_karras_sigmas` is also this
                 sampler's option, which overrides the configuration), sigma_T = 0 or sigma_min
    alpha_k, n_k 1 / sqrt(sigma_k^2 + 1) and sigma_k alpha_k: the variance-preserving state
                 z_k ~ alpha_k x_0 + n_k noise the network sees unscaled (c_k = 1, r = 1)
    lambda_k     log(alpha_k / n_k) = -log sigma_k;   h_k = lambda_{k+1} - lambda_k
    x0_k         p_k z_k + q_k out_k, the data prediction (`vp_prediction`)
    A_k          alpha_{k+1} (1 - e^{-h_k}) = alpha_{k+1} (1 - sigma_{k+1} / sigma_k)
    r_k          h_{k-1} / h_k

The first-order step (DDIM's) and the second-order multistep one:

    z_{k+1} = (n_{k+1} / n_k) z_k + A_k x0_k                                        (order 1)
    z_{k+1} = (n_{k+1} / n_k) z_k + A_k x0_k + C_k (x0_k - x0_{k-1}) / r_k          (order 2)

with C_k = A_k / 2 (`solver_type` midpoint, the default) or alpha_{k+1} ((e^{-h_k} - 1) / h_k + 1)
(heun). So a_k = n_{k+1} / n_k + (A_k + C_k / r_k) p_k, b_k = (A_k + C_k / r_k) q_k, and the one
earlier pair enters as e_k1 = -(C_k / r_k) p_{k-1}, b_k1 = -(C_k / r_k) q_{k-1}. The first step is
first order (no earlier prediction yet), and so is the last where the scheduler says
(`lower_order_final` with T < 15, `euler_at_final`, or `final_sigmas_type` "zero", whose
h is infinite). The configuration's `algorithm_type` and `solver_order` are replaced by this
sampler's; thresholding (not affine), learned variances and flow sigmas are refused.
The coefficients are computed in float64 from the scheduler's float32 sigmas; its `step`
computes in float32, so a float64 chain agrees with it to float32 round-off. Not invertible:
rebuilding z_k from z_{k+1} needs the earlier state and prediction as well.
"""

from __future__ import annotations

import logging
import math

from diffusers import DPMSolverMultistepScheduler

from sdo.samplers.base import (
    Capabilities,
    Chain,
    Step,
    scheduler_from,
    vp_prediction,
)
from sdo.samplers.euler import SPACINGS, SigmaSpacing, refuse_discarding, sigma_overrides
from sdo.samplers.registry import register_sampler

logger = logging.getLogger(__name__)
SOLVER = {"algorithm_type": "dpmsolver++", "solver_order": 2}


def vp_levels(sigma: float) -> tuple[float, float]:
    """(alpha, n) of the variance-preserving state at noise level sigma."""
    alpha = 1 / math.sqrt(sigma**2 + 1)
    return alpha, sigma * alpha


def dpmpp_step(
    sigma: list[float],
    k: int,
    prediction_type: str,
    second_order: bool,
    solver_type: str,
    earlier: tuple[float, float] = (0.0, 0.0),
) -> Step:
    """Step k over the T + 1 sigmas; `earlier` is (p_{k-1}, q_{k-1}) for a second-order step."""
    (alpha_s, n_s), (alpha_t, n_t) = vp_levels(sigma[k]), vp_levels(sigma[k + 1])
    _, (p, q) = vp_prediction(prediction_type, alpha_s, n_s)
    decay = sigma[k + 1] / sigma[k]  # e^{-h}
    weight = alpha_t * (1 - decay)  # A_k
    if not second_order:
        return Step(a=n_t / n_s + weight * p, b=weight * q, p=p, q=q)
    h, h_before = math.log(sigma[k] / sigma[k + 1]), math.log(sigma[k - 1] / sigma[k])
    r = h_before / h
    if solver_type == "midpoint":
        slope = 0.5 * weight / r
    elif solver_type == "heun":
        slope = alpha_t * ((decay - 1) / h + 1) / r
    else:
        raise ValueError(f"dpmpp_2m solver_type must be midpoint or heun, got {solver_type!r}")
    p_before, q_before = earlier
    return Step(
        a=n_t / n_s + (weight + slope) * p,
        b=(weight + slope) * q,
        p=p,
        q=q,
        earlier=((-slope * p_before, -slope * q_before),),
    )


@register_sampler
class DPMSolverPlusPlus2M(Chain):
    name = "dpmpp_2m"
    scheduler_class = "DPMSolverMultistepScheduler"
    process = "diffusion"
    order = 2

    Options = SigmaSpacing

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
        refused = (
            ("thresholding", True, "thresholding the predicted sample is not affine"),
            ("variance_type", True, "the network's learned variance channels are not modelled"),
            ("use_flow_sigmas", True, "flow sigmas belong to a velocity model: use flow_euler"),
        )
        scheduler = self.scheduler_for(steps, scheduler_config, options, refused)
        replaced = {
            key: self.scheduler_config[key]
            for key in SOLVER
            if key in self.scheduler_config and self.scheduler_config[key] != SOLVER[key]
        }
        if replaced:
            logger.warning("dpmpp_2m runs %s in place of the configuration's %s", SOLVER, replaced)
        config = scheduler.config
        if config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"dpmpp_2m takes prediction_type epsilon, v_prediction or sample, got {config.prediction_type!r}"
            )
        sigma = [float(x) for x in scheduler.sigmas.double()]
        final_first_order = (
            config.euler_at_final or (config.lower_order_final and steps < 15) or (config.final_sigmas_type == "zero")
        )
        coefficients = []
        for k in range(steps):
            second = k > 0 and not (k == steps - 1 and final_first_order)
            earlier = (coefficients[-1].p, coefficients[-1].q) if second else (0.0, 0.0)
            coefficients.append(dpmpp_step(sigma, k, config.prediction_type, second, config.solver_type, earlier))
        refuse_discarding(self.name, config.prediction_type, coefficients)
        super().__init__(
            net, scheduler.timesteps.tolist(), coefficients, [vp_levels(x) for x in sigma], cfg_scale, null_cond
        )
        self.sigmas = sigma

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        return Capabilities(
            deterministic=True,
            order=2,
            invertible=False,
            inversion=False,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> DPMSolverMultistepScheduler:
        overrides = {**SOLVER, **sigma_overrides(self.options.use_karras_sigmas, (*SPACINGS[1:], "use_lu_lambdas"))}
        scheduler = scheduler_from(DPMSolverMultistepScheduler, self.scheduler_config, **overrides)
        scheduler.set_timesteps(self._steps)
        return scheduler

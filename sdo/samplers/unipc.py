"""UniPC (Zhao et al.), the unified predictor-corrector multistep solver in its data-prediction
form, as diffusers' `UniPCMultistepScheduler` runs it (`solver_type` bh2, the default, or bh1;
`solver_order` as configured, 2 by default), for noise-, v- and sample-predicting models.

Notation (`sdo.samplers.base` and `sdo.samplers.dpmpp_2m`: sigma_k, the variance-preserving
levels alpha_k, n_k, lambda_k = -log sigma_k, x0_k = p_k z_k + q_k out_k), then UniPC's:

    z_k          the predictor's state: what the network sees (c_k = 1, r = 1), the pipeline's latents
    zc_k         the corrected state: z_k after the corrector UniC, which uses x0_k at z_k
    P_k          the predictor's x0 terms: z_{k+1} = (n_{k+1} / n_k) zc_k + P_k,
                 P_k = sum_i w_ki x0_{k-i} (UniP of order o_k, weights from its rhos_p)
    K_k          the corrector's x0 terms: zc_k = (n_k / n_{k-1}) zc_{k-1} + K_k,
                 K_k = sum_i u_ki x0_{k-i}, i = 0..o_{k-1} (weights from its rhos_c)

The corrected state is no network input, and it is one step behind: the corrector of step k needs
zc_{k-1}, which the predictor relation gives back from the state the network saw,
zc_{k-1} = (z_k - P_{k-1}) n_{k-1} / n_k (n_k > 0 before the last step). So

    z_{k+1} = (n_{k+1} / n_k) (z_k - P_{k-1} + K_k) + P_k                       (zc_0 = z_0)

is affine in z_k, out_k and the earlier pairs (z_{k-j}, out_{k-j}), j = 1..solver_order: a
multistep step of the base's form, its coefficients collected from the x0 terms. Orders follow
the scheduler: o_k = min(solver_order, k + 1), and min(., T - k) with `lower_order_final`; no
corrector at step 0 or after the steps in `disable_corrector`. The coefficients are computed
in float64 from the scheduler's float32 sigmas; its `step` keeps the sample's dtype, so with its
sigmas cast to float64 it agrees with a float64 chain to about 1e-15. Refused: thresholding (not affine),
`predict_x0` false, flow sigmas, a second-order predictor into sigma 0 (diffusers divides by
zero there). Not invertible: a state is rebuilt only from the earlier states and predictions too.
"""

from __future__ import annotations

import math

import numpy as np
from diffusers import UniPCMultistepScheduler

from sdo.samplers.base import (
    Capabilities,
    Chain,
    Step,
    scheduler_from,
    vp_prediction,
)
from sdo.samplers.dpmpp_2m import vp_levels
from sdo.samplers.euler import SPACINGS, SigmaSpacing, refuse_discarding, sigma_overrides
from sdo.samplers.registry import register_sampler

Form = dict  # (("z" | "out"), state index) -> coefficient: a linear combination of states and predictions


def combine(*terms: tuple[float, Form]) -> Form:
    """sum_i weight_i * form_i."""
    total: Form = {}
    for weight, form in terms:
        for key, value in form.items():
            total[key] = total.get(key, 0.0) + weight * value
    return total


def unipc_weights(
    now: float, to: float, history: list[float], order: int, solver_type: str, corrector: bool
) -> tuple[float, list[float], float]:
    """One UniP (or UniC) update from level `now` to `to` in data-prediction form:
    (the state's coefficient n_to / n_now, the coefficients of m_0, m_1, .., m_{order-1} (the data
    predictions at `now` and at the earlier levels `history`, most recent first), and for the
    corrector the coefficient of the new prediction at `to`)."""
    (_, n_now), (alpha_to, n_to) = vp_levels(now), vp_levels(to)
    h = math.log(now / to) if to > 0 else math.inf
    ratios = [math.log(now / earlier) / h for earlier in history[: order - 1]] + [1.0]  # r_i, then 1
    hh = -h
    h_phi = math.expm1(hh)
    h_phi_k, factorial = h_phi / hh - 1, 1
    scale = math.expm1(hh) if solver_type == "bh2" else hh  # B(h)
    b = []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / scale)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    powers = np.array([[r ** (i - 1) for r in ratios] for i in range(1, order + 1)])
    if corrector:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(powers, np.array(b)))
    else:
        rhos = [] if order == 1 else [0.5] if order == 2 else list(np.linalg.solve(powers[:-1, :-1], np.array(b[:-1])))
    # x_to = (n_to / n_now) x - alpha_to h_phi m_0
    #        - alpha_to B(h) (sum_i rho_i (m_i - m_0) / r_i [+ rho_last (m_to - m_0), the corrector's])
    weights = [-alpha_to * h_phi] + [0.0] * (order - 1)
    for i in range(1, order):
        weights[i] -= alpha_to * scale * rhos[i - 1] / ratios[i - 1]
        weights[0] += alpha_to * scale * rhos[i - 1] / ratios[i - 1]
    new = 0.0
    if corrector:
        new = -alpha_to * scale * rhos[-1]
        weights[0] += alpha_to * scale * rhos[-1]
    return n_to / n_now, weights, new


@register_sampler
class UniPC(Chain):
    name = "unipc"
    scheduler_class = "UniPCMultistepScheduler"
    process = "diffusion"

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
            ("predict_x0", False, "only the data-prediction form is implemented"),
            ("use_flow_sigmas", True, "flow sigmas belong to a velocity model: use flow_euler"),
        )
        scheduler = self.scheduler_for(steps, scheduler_config, options, refused)
        config = scheduler.config
        if config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unipc takes prediction_type epsilon, v_prediction or sample, got {config.prediction_type!r}"
            )
        sigma = [float(x) for x in scheduler.sigmas.double()]
        coefficients, self.order = self._coefficients(sigma, config, steps), self.order_for(config, steps)
        refuse_discarding(self.name, config.prediction_type, coefficients)
        super().__init__(
            net, scheduler.timesteps.tolist(), coefficients, [vp_levels(x) for x in sigma], cfg_scale, null_cond
        )
        self.sigmas = sigma

    @staticmethod
    def order_for(config, steps: int) -> int:
        """One plus the number of earlier pairs a step can use: solver_order, plus one for the corrector."""
        return int(config["solver_order"]) + (steps > 1)

    @staticmethod
    def _coefficients(sigma: list[float], config, steps: int) -> list[Step]:
        """The T steps, each collected from forms over (z_j, out_j) as the module docstring derives."""
        solver_order, solver = int(config.solver_order), config.solver_type
        x0 = []  # x0 forms per state
        predictor_terms, predictor_keep, orders, coefficients = None, 1.0, [], []
        for k in range(steps):
            _, (p, q) = vp_prediction(config.prediction_type, *vp_levels(sigma[k]))
            x0.append({("z", k): p, ("out", k): q})
            corrected = {("z", k): 1.0}
            if k > 0 and k - 1 not in config.disable_corrector:
                order = orders[-1]
                keep, weights, new = unipc_weights(
                    sigma[k - 1], sigma[k], sigma[k - 2 :: -1] if k > 1 else [], order, solver, corrector=True
                )
                corrections = [(new, x0[k])] + [(w, x0[k - 1 - i]) for i, w in enumerate(weights)]
                # zc_k = keep * zc_{k-1} + K_k, with zc_{k-1} = (z_k - P_{k-1}) / keep' (the predictor relation)
                ratio = keep / predictor_keep
                corrected = combine((ratio, corrected), (-ratio, predictor_terms), *corrections)
            order = min(solver_order, steps - k) if config.lower_order_final else solver_order
            orders.append(min(order, k + 1))
            if sigma[k + 1] == 0 and orders[-1] > 1:
                raise ValueError(
                    f"unipc refuses a predictor of order {orders[-1]} into sigma 0 at step {k} (diffusers "
                    "divides by zero there): set lower_order_final or final_sigmas_type='sigma_min'"
                )
            predictor_keep, weights, _ = unipc_weights(
                sigma[k], sigma[k + 1], sigma[k - 1 :: -1] if k else [], orders[-1], solver, corrector=False
            )
            predictor_terms = combine(*[(w, x0[k - i]) for i, w in enumerate(weights)])
            update = combine((predictor_keep, corrected), (1.0, predictor_terms))
            depth = max(k - j for _, j in update)
            earlier = tuple(
                (update.get(("z", k - j), 0.0), update.get(("out", k - j), 0.0)) for j in range(1, depth + 1)
            )
            coefficients.append(Step(a=update[("z", k)], b=update[("out", k)], p=p, q=q, earlier=earlier))
        return coefficients

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        order = int(scheduler_config.get("solver_order", 2)) + 1
        return Capabilities(
            deterministic=True,
            order=order,
            invertible=False,
            inversion=False,
            max_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )

    def diffusers_scheduler(self) -> UniPCMultistepScheduler:
        scheduler = scheduler_from(
            UniPCMultistepScheduler,
            self.scheduler_config,
            **sigma_overrides(self.options.use_karras_sigmas, SPACINGS[1:]),
        )
        scheduler.set_timesteps(self._steps)
        return scheduler

"""The samplers beyond DDIM and flow matching's Euler step: each update equals its diffusers
scheduler's `step` (or, for flow_sde, Flow-GRPO's SDE step), each chain samples what a diffusers
pipeline samples with that scheduler, and every estimator is checked on every registered
sampler (read from the registry, so a new sampler file is covered without editing this one)."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from conftest import (
    FLOW_SCHEDULE,
    TINY_CONFIG,
    directional_fd,
    relative_error,
    smooth_loss,
    tiny_problem,
    tiny_problem_parts,
)
from tiny_pipelines import SDXL_SCHEDULER, build_tiny_sd, build_tiny_sd3, build_tiny_sdxl

from sdo import NotApplicable, Problem, edict, make_estimator
from sdo.estimators import ESTIMATORS
from sdo.samplers import SAMPLERS, capabilities, make_chain, refusal

DIGITS = TINY_CONFIG["scheduler"]  # linear betas, steps_offset 1: timestep_spacing is each scheduler's default
SDXL = {**SDXL_SCHEDULER}  # scaled_linear betas, leading spacing
KARRAS = {"use_karras_sigmas": True}
ALL = sorted(SAMPLERS)
STEP_TOLERANCE = 2e-6  # the schedulers step in float32: |ours - theirs| <= this * max|theirs|


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


def _ancestral_noise(monkeypatch, noise):
    """EulerAncestralDiscreteScheduler draws its noise with `randn_tensor`: hand it `noise` in order."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral

    draws = iter(noise)
    monkeypatch.setattr(ancestral, "randn_tensor", lambda *args, **kwargs: next(draws))


def _steps_against_scheduler(chain, latent, cond, scheduler) -> float:
    """Run the chain and the scheduler side by side, each step from the chain's own state (the
    scheduler's history built from those states): the largest |z_{k+1} - step(...)| / max|step(...)|.
    Also checks the timesteps, the initial scale and the network input."""
    assert chain.timesteps == scheduler.timesteps.tolist()
    assert chain.initial_scale == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-7)
    z, earlier, worst = chain.start(latent), chain.past, 0.0
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            torch.testing.assert_close(chain.network_input(z, k), scheduler.scale_model_input(z, t), rtol=1e-6, atol=0)
            out = chain.predict(z, k, cond)
            expected = scheduler.step(out, t, z).prev_sample
            z, earlier = chain.advance(z, k, out, earlier)
            worst = max(worst, float((z - expected).abs().max() / expected.abs().max()))
    return worst


DIFFUSION_CASES = {  # name: (sampler, scheduler config, sampler options, T)
    "euler": ("euler", DIGITS, {}, 6),
    "euler karras": ("euler", DIGITS, KARRAS, 6),
    "euler sdxl (leading)": ("euler", SDXL, {}, 5),
    "euler trailing log_linear": (
        "euler",
        {**SDXL, "timestep_spacing": "trailing", "interpolation_type": "log_linear"},
        {},
        5,
    ),
    "euler sigma_min": ("euler", {**DIGITS, "final_sigmas_type": "sigma_min"}, {}, 4),
    "euler_ancestral": ("euler_ancestral", DIGITS, {}, 6),
    "euler_ancestral sdxl (leading)": ("euler_ancestral", SDXL, {}, 5),
    "dpmpp_2m": ("dpmpp_2m", DIGITS, {}, 6),
    "dpmpp_2m karras": ("dpmpp_2m", DIGITS, KARRAS, 6),
    "dpmpp_2m sdxl (leading)": ("dpmpp_2m", SDXL, {}, 5),
    "dpmpp_2m second-order last step": (
        "dpmpp_2m",
        {**DIGITS, "final_sigmas_type": "sigma_min", "lower_order_final": False},
        {},
        5,
    ),
    "dpmpp_2m T=16 (no lower order before the last)": ("dpmpp_2m", DIGITS, {}, 16),
    "dpmpp_2m heun": ("dpmpp_2m", {**DIGITS, "solver_type": "heun"}, {}, 5),
    "dpmpp_2m from an sde config": (
        "dpmpp_2m",
        {**DIGITS, "algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {},
        5,
    ),
    "unipc": ("unipc", DIGITS, {}, 6),
    "unipc karras": ("unipc", DIGITS, KARRAS, 6),
    "unipc sdxl (leading)": ("unipc", SDXL, {}, 5),
    "unipc order 3": ("unipc", {**DIGITS, "solver_order": 3}, {}, 7),
    "unipc bh1": ("unipc", {**DIGITS, "solver_type": "bh1"}, {}, 5),
    "unipc corrector off after steps 1, 2": ("unipc", {**DIGITS, "disable_corrector": [1, 2]}, {}, 6),
    "unipc second-order last step": (
        "unipc",
        {**DIGITS, "final_sigmas_type": "sigma_min", "lower_order_final": False},
        {},
        5,
    ),
}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", sorted(DIFFUSION_CASES))
def test_update_is_the_diffusers_schedulers_step(case, prediction, monkeypatch):
    """Step by step, given the same network output (and, for Euler ancestral, the same noise),
    the chain's update equals the scheduler's `step`, which computes in float32."""
    sampler, config, options, steps = DIFFUSION_CASES[case]
    chain, latent, cond = tiny_problem_parts(
        steps, sampler=sampler, options=options, schedule={**config, "prediction_type": prediction}
    )
    if chain.noise is not None:
        _ancestral_noise(monkeypatch, chain.noise)
    assert _steps_against_scheduler(chain, latent, cond, chain.diffusers_scheduler()) <= STEP_TOLERANCE


def test_unipc_equals_its_scheduler_in_float64():
    """UniPC's scheduler keeps the sample's dtype: with its sigmas in float64 too it agrees with
    the chain to float64 round-off, so the corrector's reformulation is exact, not just close."""
    for config in ({**DIGITS, "prediction_type": "v_prediction"}, {**DIGITS, "solver_order": 3}):
        chain, latent, cond = tiny_problem_parts(7, sampler="unipc", schedule=config)
        scheduler = chain.diffusers_scheduler()
        scheduler.sigmas = scheduler.sigmas.double()
        assert _steps_against_scheduler(chain, latent, cond, scheduler) <= 1e-14


def test_multistep_samplers_use_earlier_pairs_where_their_schedulers_do():
    """DPM-Solver++ 2M: first order at the first and (T < 15 or final sigma 0) the last step,
    second order between; UniPC (order 2 + corrector): up to two earlier pairs."""
    depth = lambda chain: [len(step.earlier) for step in chain.coefficients]  # noqa: E731
    assert depth(make_chain("dpmpp_2m", None, 5, DIGITS)) == [0, 1, 1, 1, 0]
    assert depth(make_chain("dpmpp_2m", None, 4, {**DIGITS, "final_sigmas_type": "sigma_min"})) == [0, 1, 1, 0]
    assert depth(
        make_chain("dpmpp_2m", None, 4, {**DIGITS, "final_sigmas_type": "sigma_min", "lower_order_final": False})
    ) == [0, 1, 1, 1]
    assert depth(make_chain("unipc", None, 5, DIGITS)) == [0, 1, 2, 2, 2]
    chain = make_chain("dpmpp_2m", None, 5, DIGITS)
    assert chain.capabilities.order == 2 and not chain.capabilities.invertible
    assert make_chain("unipc", None, 5, DIGITS).capabilities.order == 3


# ----------------------------------------------------------------------------- flow_sde
FLOW_CASES = {
    "static shift (sigma_0 = 1)": (FLOW_SCHEDULE, {}, 5),
    "dynamic shift": ({"num_train_timesteps": 1000, "use_dynamic_shifting": True}, {"mu": 0.8}, 5),
    "pipeline sigmas": (
        {"num_train_timesteps": 1000, "use_dynamic_shifting": True},
        {"mu": 1.1, "sigmas": [1.0, 0.8, 0.6, 0.4, 0.2]},
        5,
    ),
    "shift 1, no sigma = 1": ({"num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.05}, {}, 4),
}


def flow_grpo_step(sigmas: torch.Tensor, k: int, v, x, noise, noise_level: float):
    """Flow-GRPO's `sde_step_with_logprob` (sde_type "sde") written out from its code, on the
    scheduler's sigmas: std = a sqrt(sigma / (1 - sigma)), with sigmas[1] in the denominator where
    sigma == 1; mean = x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt."""
    sigma, sigma_prev, sigma_max = sigmas[k].double(), sigmas[k + 1].double(), sigmas[1].double()
    dt = sigma_prev - sigma
    std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean + std * torch.sqrt(-1 * dt) * noise


@pytest.mark.parametrize("noise_level", [0.7, 1.2])
@pytest.mark.parametrize("case", sorted(FLOW_CASES))
def test_flow_sde_update_is_flow_grpos_step(case, noise_level):
    """Over the sigmas flow_euler takes (the model's mu and sigmas included), every update equals
    Flow-GRPO's SDE step with the same noise, in float64."""
    schedule, extra, steps = FLOW_CASES[case]
    tiny, latent, cond = tiny_problem_parts(1)
    chain = make_chain("flow_sde", tiny.net, steps, schedule, options={"noise_level": noise_level}, schedule=extra)
    ode = make_chain("flow_euler", tiny.net, steps, schedule, schedule=extra)
    assert chain.timesteps == ode.timesteps and chain.sigmas == ode.sigmas and chain.sigmas[-1] == 0
    chain.fix_noise(latent, torch.Generator().manual_seed(4))
    sigmas = chain.diffusers_scheduler().sigmas
    z = latent
    with torch.no_grad():
        for k in range(steps):
            v = chain.predict(z, k, cond)
            expected = flow_grpo_step(sigmas, k, v, z, chain.noise[k], noise_level)
            z = chain.update(z, k, v)
            torch.testing.assert_close(z, expected, rtol=1e-12, atol=1e-12)


def test_flow_sde_without_noise_is_flow_euler():
    chain, ode = (
        make_chain("flow_sde", None, 6, FLOW_SCHEDULE, options={"noise_level": 0.0}),
        make_chain("flow_euler", None, 6, FLOW_SCHEDULE),
    )
    assert chain.coefficients == ode.coefficients and chain.deterministic and chain.capabilities.invertible


class GaussianVelocity(torch.nn.Module):
    """The exact velocity E[noise - x_0 | z] of flow matching for data ~ N(mean, std^2 I), at
    z = (1 - s) x_0 + s noise with s = t / 1000: affine in z."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def slope_offset(self, s):
        var = (1 - s) ** 2 * self.std**2 + s**2
        slope = (s - (1 - s) * self.std**2) / var
        return slope, -self.mean - slope * (1 - s) * self.mean

    def forward(self, z, t, cond):
        slope, offset = self.slope_offset((t / 1000).view(-1, *[1] * (z.dim() - 1)).to(z))
        return slope * z + offset


def _law(chain, net) -> tuple[float, float]:
    """The exact mean and variance of the chain's sample per coordinate (velocity affine in z, so
    every state is Gaussian): mu' = A mu + b offset, var' = A^2 var + s^2 with A = a + b slope."""
    mean, var = 0.0, chain.initial_scale**2
    for k, step in enumerate(chain.coefficients):
        slope, offset = net.slope_offset(chain.timesteps[k] / 1000)
        grow = step.a + step.b * slope
        mean, var = grow * mean + step.b * offset, grow**2 * var + step.s**2
    return mean, var


def test_flow_sde_keeps_the_odes_marginals_on_a_gaussian():
    """Data ~ N(0.5, 0.3^2): over 40000 draws the SDE's sample mean and variance match the
    data's and the ODE's within sampling error (4 standard errors), and match the chain's own
    exact Gaussian law; that law's variance error falls as T grows, for the SDE as for the ODE."""
    mean, std, steps, draws = 0.5, 0.3, 640, (10000, 4)
    net = GaussianVelocity(mean, std)
    schedule = {"num_train_timesteps": 1000, "shift": 1.0}
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(*draws, generator=generator, dtype=torch.float64)
    sde, ode = make_chain("flow_sde", net, steps, schedule), make_chain("flow_euler", net, steps, schedule)
    sde.fix_noise(latent, generator)
    with torch.no_grad():
        samples = {
            name: chain.sample(latent, torch.zeros(1), graph_from=None) for name, chain in (("sde", sde), ("ode", ode))
        }
    n = latent.numel()
    se_mean, se_var = std / math.sqrt(n), std**2 * math.sqrt(2 / n)
    for name, x in samples.items():
        assert abs(float(x.mean()) - mean) <= 4 * se_mean, (name, float(x.mean()))
        assert abs(float(x.var()) - std**2) <= 4 * se_var, (name, float(x.var()))
    exact_mean, exact_var = _law(sde, net)
    assert abs(float(samples["sde"].mean()) - exact_mean) <= 4 * se_mean
    assert abs(float(samples["sde"].var()) - exact_var) <= 4 * se_var
    assert abs(float(samples["sde"].var()) - float(samples["ode"].var())) <= 4 * se_var * math.sqrt(2)
    for name in ("flow_sde", "flow_euler"):
        errors = [abs(_law(make_chain(name, net, t, schedule), net)[1] / std**2 - 1) for t in (20, 80, 320)]
        assert errors[0] > errors[1] > errors[2] and errors[2] <= 0.015, (name, errors)


# ----------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler_pipelines")
    build_tiny_sd(root / "sd", prediction_type="epsilon")
    build_tiny_sd(root / "sd_v", prediction_type="v_prediction")
    build_tiny_sdxl(root / "sdxl")
    build_tiny_sd3(root / "sd3")
    return root


def _pipeline(cls, directory, scheduler=None):
    pipeline = cls.from_pretrained(directory, local_files_only=True)
    if scheduler is not None:
        pipeline.scheduler = scheduler
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


PIPELINE_CASES = {  # name: (sampler, its options, what `from_config` adds to the pipeline's scheduler config)
    "euler": ("euler", {}, {}),
    "euler karras": ("euler", KARRAS, KARRAS),
    "euler_ancestral": ("euler_ancestral", {}, {}),
    "dpmpp_2m": ("dpmpp_2m", {}, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m karras": ("dpmpp_2m", KARRAS, {"algorithm_type": "dpmsolver++", "solver_order": 2, **KARRAS}),
    "unipc": ("unipc", {}, {}),
}


@pytest.mark.parametrize("prediction", ["sd", "sd_v"])
@pytest.mark.parametrize("case", sorted(PIPELINE_CASES))
def test_the_chain_samples_what_the_sd_pipeline_samples_with_that_scheduler(saved, case, prediction, monkeypatch):
    """Stable Diffusion (noise or v prediction) with its scheduler replaced the way users do
    (`Scheduler.from_config(pipeline.scheduler.config)`): the model's chain of the matching sampler
    samples the same latents from the same initial latents (and the same noise), to float32 round-off."""
    from sdo.models import load_model

    sampler, options, added = PIPELINE_CASES[case]
    model = load_model(str(saved / prediction))
    pipeline = _pipeline(diffusers.StableDiffusionPipeline, saved / prediction)
    pipeline.scheduler = getattr(diffusers, SAMPLERS[sampler].scheduler_class).from_config(
        pipeline.scheduler.config, **added
    )
    generator = torch.Generator().manual_seed(0)
    latents = model.latent_batch(2, generator)
    prompts = ["a photo of a cat", "a red dog"]
    chain = model.make_chain(4, 3.0, sampler=sampler, **options)
    if not chain.deterministic:
        chain.fix_noise(latents, generator)
        _ancestral_noise(monkeypatch, chain.noise)
    expected = pipeline(
        prompts,
        output_type="latent",
        latents=latents,
        num_inference_steps=4,
        guidance_scale=3.0,
        height=model.resolution,
        width=model.resolution,
    ).images
    with torch.no_grad():
        sample = chain.sample(latents, model.encode(prompts), graph_from=None)
    assert float((sample - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_sdxl_samples_with_its_own_euler_scheduler_by_default(saved):
    """SDXL base ships EulerDiscreteScheduler: its default sampler is euler, and the default chain
    samples what the unmodified pipeline samples."""
    from sdo.models import load_model

    model = load_model(str(saved / "sdxl"))
    assert model.default_sampler() == "euler"
    pipeline = _pipeline(diffusers.StableDiffusionXLPipeline, saved / "sdxl")
    assert type(pipeline.scheduler).__name__ == SAMPLERS["euler"].scheduler_class
    latents = model.latent_batch(2, torch.Generator().manual_seed(0))
    prompts = ["a photo of a cat", "a red dog"]
    expected = pipeline(
        prompts,
        output_type="latent",
        latents=latents,
        num_inference_steps=4,
        guidance_scale=4.0,
        height=model.resolution,
        width=model.resolution,
    ).images
    with torch.no_grad():
        sample = model.make_chain(4, 4.0).sample(latents, model.encode(prompts), graph_from=None)
    assert float((sample - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_flow_sde_samples_what_sd3s_pipeline_samples_with_flow_grpos_step(saved, monkeypatch):
    """SD3's pipeline with its scheduler's `step` replaced by Flow-GRPO's SDE step (as Flow-GRPO
    samples), fed the chain's noise: the model's flow_sde chain samples the same latents."""
    from sdo.models import load_model

    model = load_model(str(saved / "sd3"))
    pipeline = _pipeline(diffusers.StableDiffusion3Pipeline, saved / "sd3")
    generator = torch.Generator().manual_seed(0)
    latents = model.latent_batch(2, generator)
    chain = model.make_chain(4, 4.0, sampler="flow_sde")
    chain.fix_noise(latents, generator)
    scheduler, taken = pipeline.scheduler, iter(range(4))

    def step(model_output, timestep, sample, return_dict=True, **kwargs):
        k = next(taken)
        prev = flow_grpo_step(scheduler.sigmas, k, model_output.double(), sample.double(), chain.noise[k].double(), 0.7)
        return (prev.to(sample.dtype),)

    monkeypatch.setattr(scheduler, "step", step)
    prompts = ["a photo of a cat", "a red dog"]
    expected = pipeline(
        prompts,
        output_type="latent",
        latents=latents,
        num_inference_steps=4,
        guidance_scale=4.0,
        height=model.resolution,
        width=model.resolution,
    ).images
    with torch.no_grad():
        sample = chain.sample(latents, model.encode(prompts), graph_from=None)
    assert float((sample - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


# ----------------------------------------------------------------------------- estimators on every sampler
@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
@pytest.mark.parametrize("sampler", ALL)
def test_full_matches_finite_differences(sampler, wrt):
    """Central differences with h = 1e-7: the losses of these chains are curved enough in the
    weights that h = 1e-6 leaves a truncation error near 4e-5 (it falls as h^2)."""
    problem = tiny_problem(wrt, steps=3, sampler=sampler)
    loss = smooth_loss()
    estimate = make_estimator("full")(problem, loss)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        numeric = directional_fd(problem, loss, direction, h=1e-7)
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)


@pytest.mark.parametrize("sampler", ALL)
def test_influence_is_the_affine_paths_derivative(sampler):
    """`Chain.influence()` against autograd through the chain's own updates with z_0 and every
    out_k as free leaves: d(g . z_T)/dz_0 = r_0 g and d(g . z_T)/d out_k = w_k g."""
    chain, latent, _ = tiny_problem_parts(6, sampler=sampler)
    generator = torch.Generator().manual_seed(9)
    z0 = latent.clone().requires_grad_()
    outs = [torch.randn(latent.shape, generator=generator, dtype=latent.dtype).requires_grad_() for _ in range(6)]
    z, earlier = z0, ()
    for k in range(6):
        z, earlier = chain.advance(z, k, outs[k], earlier)
    g = torch.randn(latent.shape, generator=generator, dtype=latent.dtype)
    grads = torch.autograd.grad((g * z).sum(), [z0, *outs])
    through_state, through_out = chain.influence()
    torch.testing.assert_close(grads[0], through_state * g, rtol=1e-12, atol=1e-12)
    for k in range(6):
        torch.testing.assert_close(grads[k + 1], through_out[k] * g, rtol=1e-12, atol=1e-12)


def _one_step_attached(problem: Problem, graph_step: int, loss) -> list[torch.Tensor]:
    """Autograd through the whole chain (its affine path, earlier pairs included) with every
    network output detached but step `graph_step`'s, whose input is detached unless it is z_0
    of a latent problem: the shortcut's rule written out."""
    chain, earlier = problem.chain, problem.chain.past
    z = chain.start(problem.latent)
    for k in range(chain.steps):
        if k == graph_step:
            out = chain.predict(z if (problem.wrt == "latent" and k == 0) else z.detach(), k, problem.cond)
        else:
            with torch.no_grad():
                out = chain.predict(z.detach(), k, problem.cond)
        z, earlier = chain.advance(z, k, out, earlier)
    return list(torch.autograd.grad(loss(z), problem.params, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("sampler", ALL)
def test_shortcut_is_autograd_with_all_but_the_chosen_steps_detached(sampler):
    loss = smooth_loss()
    latent_problem = tiny_problem("latent", steps=4, sampler=sampler)
    expected = _one_step_attached(latent_problem, 0, loss)
    assert relative_error(make_estimator("shortcut")(latent_problem, loss).grads, expected) <= 1e-10
    problem = tiny_problem("cond", steps=4, sampler=sampler)
    terms = [_one_step_attached(problem, k, loss) for k in range(4)]
    expected = [sum(parts) for parts in zip(*terms)]
    assert relative_error(make_estimator("shortcut", at="all")(problem, loss).grads, expected) <= 1e-10
    assert relative_error(make_estimator("shortcut", at="last")(problem, loss).grads, terms[-1]) <= 1e-10


@pytest.mark.parametrize(
    "config",
    [DIGITS, {**DIGITS, "final_sigmas_type": "sigma_min", "lower_order_final": False}],
    ids=["last step first order", "last step second order"],
)
def test_dpmpp_2m_shortcut_by_hand_at_three_steps(config):
    """T = 3 written out from the coefficients: z_1 = a0 z0 + b0 o0; z_2 = a1 z1 + b1 o1 + e11 z0 + b11 o0;
    z_3 = a2 z2 + b2 o2 + e21 z1 + b21 o1. So dz3/dz0 = a2 (a1 a0 + e11) + e21 a0 and
    dz3/do0 = a2 (a1 b0 + b11) + e21 b0: the shortcut's step-0 term reaches z_T through the
    second-order step's earlier prediction."""
    chain, latent, cond = tiny_problem_parts(3, sampler="dpmpp_2m", schedule=config)
    c0, c1, c2 = chain.coefficients
    (e11, b11), (e21, b21) = c1.earlier[0], (c2.earlier or ((0.0, 0.0),))[0]
    assert e11 != 0 and b11 != 0 and (e21 != 0) == (config is not DIGITS)
    state = c2.a * (c1.a * c0.a + e11) + e21 * c0.a
    out = [c2.a * (c1.a * c0.b + b11) + e21 * c0.b, c2.a * c1.b + b21, c2.b]
    through_state, through_out = chain.influence()
    assert through_state == pytest.approx(state, rel=1e-13) and through_out == pytest.approx(out, rel=1e-13)
    loss = smooth_loss()
    estimate = make_estimator("shortcut")(Problem(chain, latent, cond, "latent"), loss)
    with torch.no_grad():
        sample = chain.sample(latent, cond, graph_from=None).requires_grad_()
    (g,) = torch.autograd.grad(loss(sample), sample)
    _, jacobian_term = torch.autograd.functional.vjp(lambda x: chain.predict(x, 0, cond), latent, g)
    torch.testing.assert_close(estimate.grads[0], state * g + out[0] * jacobian_term, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wrt", ["latent", "cond"])
@pytest.mark.parametrize("sampler", ALL)
def test_adjoint_converges_to_full_or_is_not_applicable(sampler, wrt):
    """T = 8, 16, 32: at T = 4 ddim's error is not yet falling (0.115, 0.159, 0.060 at 4, 8, 16 for cond)."""
    if not tiny_problem_parts(4, sampler=sampler)[0].capabilities.invertible:
        with pytest.raises(NotApplicable, match="adjoint needs"):
            make_estimator("adjoint")(tiny_problem(wrt, steps=4, sampler=sampler), smooth_loss())
        return
    errors = []
    for steps in (8, 16, 32):
        problem = tiny_problem(wrt, steps=steps, perturb=0.0, sampler=sampler, batch=1)
        loss = smooth_loss()
        errors.append(
            relative_error(make_estimator("adjoint")(problem, loss).grads, make_estimator("full")(problem, loss).grads)
        )
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 0.1, errors


@pytest.mark.parametrize("sampler", ALL)
def test_doodl_is_autograd_through_edict_or_not_applicable(sampler):
    problem = tiny_problem("cond", steps=4, sampler=sampler)
    loss = smooth_loss()
    if refusal("doodl", ESTIMATORS["doodl"].needs, sampler, problem.chain.capabilities):
        with pytest.raises(NotApplicable, match="doodl needs"):
            make_estimator("doodl")(problem, loss)
        return
    estimate = make_estimator("doodl")(problem, loss)
    x, _ = edict.sample(problem.chain, problem.latent, problem.cond)
    expected = torch.autograd.grad(loss(x), problem.params)
    assert relative_error(estimate.grads, list(expected)) <= 1e-9


@pytest.mark.parametrize("sampler", ALL)
def test_every_estimator_runs_or_says_why_not(sampler):
    """Every registered estimator on every sampler gives finite gradients or NotApplicable."""
    options = {"truncated": {"tail": 1}}
    for wrt in ("latent", "cond"):
        problem = tiny_problem(wrt, steps=3, sampler=sampler)
        for name in sorted(ESTIMATORS):
            try:
                estimate = make_estimator(name, **options.get(name, {}))(problem, smooth_loss())
            except NotApplicable:
                continue
            assert all(torch.isfinite(g).all() for g in estimate.grads), (sampler, wrt, name)


@pytest.mark.parametrize("wrt", ["cond", "weights"])
@pytest.mark.parametrize("sampler", ALL)
def test_the_alternatives_reduce_to_their_exact_cases_on_every_sampler(sampler, wrt):
    """On every sampler, multistep and stochastic ones included: checkpointed full and DRaFT
    through every step are full backpropagation; DRTune supervising every step is the shortcut
    at every step, and supervising the first alone the shortcut at the first."""
    problem, loss = tiny_problem(wrt, steps=3, sampler=sampler), smooth_loss()

    def grads(name, **options):
        return make_estimator(name, **options)(problem, loss).grads

    full = grads("full")
    assert relative_error(grads("full", checkpoint=True), full) <= 1e-10
    assert relative_error(grads("truncated", tail=3), full) <= 1e-10
    assert relative_error(grads("drtune", supervised=3), grads("shortcut", at="all")) <= 1e-10
    assert relative_error(grads("drtune", supervised=1), grads("shortcut", at="first")) <= 1e-10
    assert relative_error(grads("shortcut", at="all"), full) > 1e-3  # the identities are not vacuous


@pytest.mark.parametrize("sampler", ALL)
def test_a_stochastic_chain_is_a_function_of_its_drawn_noise(sampler):
    chain, latent, cond = tiny_problem_parts(4, sampler=sampler)
    declared = SAMPLERS[sampler].capabilities_for(SAMPLERS[sampler].Options(), chain.scheduler_config)
    assert declared.deterministic == chain.deterministic
    if chain.deterministic:
        return
    runs = []
    for seed in (4, 4, 5):
        chain.fix_noise(latent, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            runs.append(chain.sample(latent, cond, graph_from=None))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    chain.noise = None
    with pytest.raises(RuntimeError, match="call fix_noise first"):
        chain.sample(latent, cond, graph_from=None)


# ----------------------------------------------------------------------------- refusals and capabilities
@pytest.mark.parametrize(
    "sampler, options, config, message",
    [
        ("euler", {"s_churn": 0.5}, DIGITS, "euler s_churn must be 0"),
        ("euler_ancestral", KARRAS, DIGITS, "unknown option 'use_karras_sigmas' for sampler 'euler_ancestral'"),
        ("flow_sde", {"noise_level": -0.1}, FLOW_SCHEDULE, "flow_sde noise_level must be a finite number >= 0"),
        ("flow_sde", {"eta": 0.5}, FLOW_SCHEDULE, "unknown option 'eta' for sampler 'flow_sde'"),
        ("dpmpp_2m", {"use_karras_sigmas": "yes"}, DIGITS, "option 'use_karras_sigmas' of sampler 'dpmpp_2m'"),
    ],
)
def test_bad_options_are_refused_by_name(sampler, options, config, message):
    with pytest.raises(ValueError, match=message):
        capabilities(sampler, options, config)
    with pytest.raises(ValueError, match=message):
        make_chain(sampler, None, 4, config, options=options)


@pytest.mark.parametrize(
    "sampler, config, message",
    [
        (
            "ddim",
            {**DIGITS, "clip_sample": True},
            "ddim refuses clip_sample=True: clipping the predicted sample is not",
        ),
        ("ddim", {**DIGITS, "thresholding": True}, "ddim refuses thresholding=True"),
        ("dpmpp_2m", {**DIGITS, "thresholding": True}, "dpmpp_2m refuses thresholding"),
        ("dpmpp_2m", {**DIGITS, "variance_type": "learned_range"}, "dpmpp_2m refuses variance_type"),
        ("dpmpp_2m", {**DIGITS, "use_flow_sigmas": True}, "dpmpp_2m refuses use_flow_sigmas"),
        ("unipc", {**DIGITS, "predict_x0": False}, "unipc refuses predict_x0"),
        ("unipc", {**DIGITS, "thresholding": True}, "unipc refuses thresholding"),
        ("unipc", {**DIGITS, "lower_order_final": False}, "unipc refuses a predictor of order 2 into sigma 0"),
        ("euler", {**DIGITS, "prediction_type": "sample"}, "euler refuses prediction_type='sample' with a final sigma"),
        (
            "euler_ancestral",
            {**DIGITS, "prediction_type": "sample"},
            "euler_ancestral takes prediction_type epsilon or",
        ),
        ("euler", DIGITS | {"num_train_timesteps": 10}, "euler runs 1..10 steps"),
    ],
)
def test_configurations_the_samplers_cannot_follow_are_refused(sampler, config, message):
    steps = 11 if "runs 1.." in message else 4
    with pytest.raises(ValueError, match=message):
        make_chain(sampler, None, steps, config)


def test_capabilities_say_what_each_sampler_can_do():
    flow = FLOW_SCHEDULE
    table = [  # sampler, options, configuration: deterministic, order, invertible
        ("euler", None, DIGITS, (True, 1, True)),
        ("euler_ancestral", None, DIGITS, (False, 1, False)),
        ("dpmpp_2m", None, DIGITS, (True, 2, False)),
        ("unipc", None, DIGITS, (True, 3, False)),
        ("unipc", None, {**DIGITS, "solver_order": 3}, (True, 4, False)),
        ("flow_sde", None, flow, (False, 1, False)),
        ("flow_sde", {"noise_level": 0.0}, flow, (True, 1, True)),
    ]
    for sampler, options, config, (deterministic, order, invertible) in table:
        declared = capabilities(sampler, options, config)
        assert (declared.deterministic, declared.order, declared.invertible, declared.inversion) == (
            deterministic,
            order,
            invertible,
            False,
        ), sampler
        assert declared.max_steps == 1000
        built = make_chain(sampler, None, 5, config, options=options).capabilities
        assert (built.deterministic, built.order, built.invertible) == (deterministic, order, invertible), sampler
    reason = refusal("adjoint", ESTIMATORS["adjoint"].needs, "dpmpp_2m", capabilities("dpmpp_2m", None, DIGITS))
    assert reason == (
        "adjoint needs a sampler whose state can be rebuilt from the next one; "
        "dpmpp_2m is deterministic, multistep (order 2)"
    )

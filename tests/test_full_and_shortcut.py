"""`full` against finite differences and `shortcut` against its closed form, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FLOW_SCHEDULE, SAMPLERS, TINY_CONFIG, directional_fd, smooth_loss, tiny_problem_parts
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from sdo import Problem, make_estimator
from sdo.memory import saved_bytes
from sdo.samplers import make_chain


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.5), ("flow_euler", 0.0)])
def test_full_matches_finite_differences(wrt, sampler, eta):
    chain, latent, cond = tiny_problem_parts(steps=3, eta=eta, sampler=sampler)
    chain.net.requires_grad_(wrt == "weights")
    problem = Problem(chain, latent, cond, wrt)
    loss = smooth_loss()
    estimate = make_estimator("full")(problem, loss)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        numeric = directional_fd(problem, loss, direction)
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)
    assert estimate.nfe_forward == 3 and estimate.nfe_backward == 3


def _guided_eps(chain, z, k, cond):
    """Guided noise prediction computed from the network directly, not through the chain."""
    t = torch.full((z.shape[0],), float(chain.timesteps[k]), dtype=z.dtype)
    uncond = chain.net(z, t, chain.null_cond.expand_as(cond))
    return uncond + chain.cfg_scale * (chain.net(z, t, cond) - uncond)


def _sample_grad(chain, latent, cond, loss):
    with torch.no_grad():
        sample = chain.sample(latent, cond, graph_from=None)
    sample.requires_grad_()
    return torch.autograd.grad(loss(sample), sample)[0]


def _abar(chain, sampler: str) -> tuple[float, float]:
    """(abar_0, abar_T) of the closed forms below: DDIM's alphas; flow matching's Euler step
    has a_k = 1, so both are 1 there."""
    return (chain.alphas_cumprod[0], chain.alphas_cumprod[-1]) if sampler == "ddim" else (1.0, 1.0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shortcut_latent_matches_closed_form(sampler):
    """dL/dz_0 = sqrt(a_T/a_0) * (g + sqrt(a_0) (sigma_1 - sigma_0) J_out^T g), J at step 0 only."""
    chain, latent, cond = tiny_problem_parts(steps=4, sampler=sampler)
    loss = smooth_loss()
    estimate = make_estimator("shortcut")(Problem(chain, latent, cond, "latent"), loss)
    g = _sample_grad(chain, latent, cond, loss)
    (a0, aT), sigma = _abar(chain, sampler), chain.sigmas
    _, jvp_term = torch.autograd.functional.vjp(lambda z: _guided_eps(chain, z, 0, cond), latent, g)
    expected = math.sqrt(aT / a0) * (g + math.sqrt(a0) * (sigma[1] - sigma[0]) * jvp_term)
    torch.testing.assert_close(estimate.grads[0], expected, rtol=1e-10, atol=1e-12)
    assert (
        estimate.nfe_forward == 4 and estimate.nfe_backward == 1 and estimate.graph_steps == [0]
    )  # graph kept in the pass


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("at", ["first", "last", "all"])
def test_shortcut_conditioning_matches_closed_form(at, sampler):
    """dL/dc = sqrt(a_T) * sum_{k in S} (sigma_{k+1} - sigma_k) J_{out_k, c}^T g with every z_k held fixed."""
    chain, latent, cond = tiny_problem_parts(steps=4, sampler=sampler)
    loss = smooth_loss()
    estimate = make_estimator("shortcut", at=at)(Problem(chain, latent, cond, "cond"), loss)
    g = _sample_grad(chain, latent, cond, loss)
    states = [latent]
    with torch.no_grad():
        for k in range(chain.steps):
            states.append(chain.step(states[-1], k, cond))
    chosen = {"first": [0], "last": [3], "all": [0, 1, 2, 3]}[at]
    sigma, (_, aT) = chain.sigmas, _abar(chain, sampler)
    expected = torch.zeros_like(cond)
    for k in chosen:
        _, part = torch.autograd.functional.vjp(lambda c, k=k: _guided_eps(chain, states[k], k, c), cond, g)
        expected += math.sqrt(aT) * (sigma[k + 1] - sigma[k]) * part
    torch.testing.assert_close(estimate.grads[0], expected, rtol=1e-10, atol=1e-12)
    assert estimate.nfe_backward == len(chosen)


FLOW_SCHEDULES = {
    "static shift": (FLOW_SCHEDULE, {}),
    "dynamic shift": (
        {
            "num_train_timesteps": 1000,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "time_shift_type": "exponential",
        },
        {"mu": 0.8},
    ),
    "terminal": ({"num_train_timesteps": 1000, "shift": 3.0, "shift_terminal": 0.1}, {}),
    "pipeline sigmas": (
        {"num_train_timesteps": 1000, "use_dynamic_shifting": True},
        {"mu": 1.1, "sigmas": [1.0, 0.8, 0.6, 0.4, 0.2]},
    ),
}


@pytest.mark.parametrize("name", sorted(FLOW_SCHEDULES))
def test_flow_update_is_diffusers_flow_match_euler_step(name):
    """Every step's update equals FlowMatchEulerDiscreteScheduler.step, as each pipeline sets
    the scheduler up (static shift, dynamic shifting with mu, a terminal sigma, the pipeline's
    own sigmas); the scheduler computes in float32, so float32 round-off is the tolerance."""
    schedule, options = FLOW_SCHEDULES[name]
    steps = len(options.get("sigmas", [])) or 5
    _, latent, cond = tiny_problem_parts(steps=steps, sampler="flow_euler")
    net = tiny_problem_parts(steps=steps, sampler="flow_euler")[0].net
    chain = make_chain("flow_euler", net, steps, schedule, schedule=options)
    scheduler = FlowMatchEulerDiscreteScheduler(**schedule)
    scheduler.set_timesteps(steps if "sigmas" not in options else None, **options)
    assert chain.timesteps == scheduler.timesteps.tolist() and chain.sigmas[-1] == 0
    z = latent
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            out = chain.predict(z, k, cond)
            expected = scheduler.step(out, t, z).prev_sample
            z = chain.update(z, k, out)
            torch.testing.assert_close(z, expected.double(), rtol=1e-6, atol=1e-6)


def test_flow_sampler_refuses_what_it_does_not_do():
    with pytest.raises(ValueError, match="unknown option .eta. for sampler .flow_euler."):
        tiny_problem_parts(steps=2, eta=0.3, sampler="flow_euler")
    with pytest.raises(ValueError, match="stochastic_sampling"):
        make_chain("flow_euler", None, 2, {"stochastic_sampling": True})
    with pytest.raises(ValueError, match="unknown sampler"):
        make_chain("dpm_2m", None, 2, {})


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_chain_update_is_diffusers_ddim_step(eta):
    """Every step's update equals DDIMScheduler.step with the same eps and noise."""
    chain, latent, cond = tiny_problem_parts(steps=6, eta=eta)
    scheduler = DDIMScheduler(**TINY_CONFIG["scheduler"])
    scheduler.set_timesteps(6)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    z = latent
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            eps = chain.predict(z, k, cond)
            noise = chain.noise[k] if eta else None
            expected = scheduler.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
            z = chain.update(z, k, eps)
            torch.testing.assert_close(z, expected, rtol=1e-12, atol=1e-12)


def test_same_seed_gives_bit_identical_samples_whatever_the_global_rng():
    """The chain's noise and latents come from explicit generators: the global RNG, advanced
    between the runs, must not matter, and another seed must give other samples."""
    chain, _, cond = tiny_problem_parts(steps=5, eta=0.3)
    runs = []
    for seed in (4, 4, 5):
        torch.rand(7)  # moves the global RNG
        generator = torch.Generator().manual_seed(seed)
        latent = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
        chain.fix_noise(latent, generator)
        with torch.no_grad():
            runs.append(chain.sample(latent, cond, graph_from=None))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_saved_bytes_linear_for_full_flat_for_shortcut():
    counted = {}
    for steps in (4, 16):
        chain, latent, cond = tiny_problem_parts(steps=steps)
        for name in ("full", "shortcut"):
            counted[name, steps] = saved_bytes(
                make_estimator(name), Problem(chain, latent, cond, "latent"), smooth_loss()
            )
    assert counted["full", 16] > 3.5 * counted["full", 4]
    assert counted["shortcut", 16] == counted["shortcut", 4]
    assert counted["shortcut", 16] < counted["full", 16] / 10


def test_bad_inputs_are_named():
    chain, latent, cond = tiny_problem_parts(steps=2)
    with pytest.raises(ValueError, match="wrt must be one of"):
        Problem(chain, latent, cond, "noise")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="shortcut option at must be one of"):
        make_estimator("shortcut", at="middle")
    with pytest.raises(ValueError, match="no parameter of chain.net requires grad"):
        Problem(chain, latent, cond, "weights")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_half_precision_states_hand_the_network_float32_timesteps(sampler):
    """bf16 holds only multiples of 4 above 512 (981 would reach the network as 980): the
    chain, a Picard sweep and the plain diffusers loop pass float32 timesteps beside bf16 states,
    the values the scheduler gives."""
    from evals.plain_loop import plain_gradient
    from sdo.picard import batched_predictions

    chain, latent, cond = tiny_problem_parts(3, sampler=sampler, cfg_scale=1.0)
    chain.net.to(torch.bfloat16)
    seen = []
    net = chain.net.forward
    chain.net.forward = lambda x, t, c: (seen.append(t), net(x, t, c))[1]
    z = latent[:1].to(torch.bfloat16).requires_grad_()
    chain.predict(z, 0, cond[:1].to(torch.bfloat16))
    batched_predictions(chain, [z.detach()] * 4, cond[:1].to(torch.bfloat16))
    plain_gradient("shortcut", Problem(chain, z, cond[:1].to(torch.bfloat16), wrt="latent"), lambda x: x.float().sum())
    assert seen and all(t.dtype == torch.float32 for t in seen)
    expected = {float(torch.tensor(float(t), dtype=torch.float32)) for t in chain.timesteps}
    assert {float(v) for t in seen for v in t} <= expected and float(chain.timesteps[0]) in {float(v) for v in seen[0]}

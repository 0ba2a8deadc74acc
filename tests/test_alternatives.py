"""DRTune, ReFL, training-free guidance and the warm-started shortcut, each against an
independent reference in float64."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import SAMPLERS, TINY_CONFIG, relative_error, smooth_loss, tiny_problem, tiny_problem_parts
from diffusers import DDIMParallelScheduler
from torch import nn

from sdo import NotApplicable, Problem, make_estimator, picard
from sdo.guidance import guidance_gradient, guided_sample, schedule_weights
from sdo.samplers.ddim import DDIM


def _net_eps(chain, z, k, cond):
    """Guided noise prediction computed from the network directly, not through the chain."""
    t = torch.full((z.shape[0],), float(chain.timesteps[k]), dtype=z.dtype)
    uncond = chain.net(z, t, chain.null_cond.expand_as(cond))
    return uncond + chain.cfg_scale * (chain.net(z, t, cond) - uncond)


def _x0_hat(chain, z, k, cond):
    """The clean sample predicted at state k, by each sampler's own formula."""
    out = _net_eps(chain, z, k, cond)
    if chain.name == "flow_euler":
        return z - chain.sigmas[k] * out
    a = chain.alphas_cumprod[k]
    return (z - math.sqrt(1 - a) * out) / math.sqrt(a)


def _states(chain, latent, cond) -> list[torch.Tensor]:
    final, kept = chain.trajectory(latent, cond, keep=range(chain.steps))
    return [kept[k] for k in range(chain.steps)] + [final]


def _grads(value, problem):
    return list(torch.autograd.grad(value, problem.params, allow_unused=True, materialize_grads=True))


# DRTune


def _literal_drtune(problem: Problem, supervised: set[int], loss) -> list[torch.Tensor]:
    """The rule written out: detached inputs at the supervised steps, no graph elsewhere, and
    the affine update carrying the graph."""
    chain, z = problem.chain, problem.latent
    for k in range(chain.steps):
        with torch.set_grad_enabled(k in supervised):
            eps = chain.predict(z.detach(), k, problem.cond)
        z = chain.update(z, k, eps)
    return _grads(loss(z), problem)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", ["cond", "weights"])
def test_drtune_all_steps_is_shortcut_all_and_one_step_is_shortcut_first(wrt, sampler):
    problem, loss = tiny_problem(wrt, steps=3, sampler=sampler), smooth_loss()
    every = make_estimator("drtune", supervised=3)(problem, loss)
    assert relative_error(every.grads, make_estimator("shortcut", at="all")(problem, loss).grads) <= 1e-10
    assert every.graph_steps == [0, 1, 2] and every.nfe_forward == 6 and every.nfe_backward == 3
    one = make_estimator("drtune", supervised=1)(problem, loss)
    assert relative_error(one.grads, make_estimator("shortcut", at="first")(problem, loss).grads) <= 1e-10
    assert one.graph_steps == [0]


def test_drtune_supervises_evenly_spaced_steps_by_the_literal_rule():
    problem, loss = tiny_problem("cond", steps=5), smooth_loss()
    estimator = make_estimator("drtune", supervised=3)
    estimate = estimator(problem, loss)
    assert estimate.graph_steps == [0, 1, 3]  # floor(i * 5 / 3), i = 0, 1, 2
    assert estimate.nfe_forward == 5 + 3 and estimate.nfe_backward == 3
    assert estimator.depth(estimate, 5) == 5 + 2
    assert relative_error(estimate.grads, _literal_drtune(problem, {0, 1, 3}, loss)) <= 1e-10


def test_drtune_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="drtune supervised=4 exceeds the chain's 3 steps"):
        make_estimator("drtune", supervised=4)(tiny_problem("cond", steps=3), smooth_loss())
    with pytest.raises(NotApplicable, match="detaches every network input"):
        make_estimator("drtune", supervised=2)(tiny_problem("latent", steps=3), smooth_loss())
    with pytest.raises(ValueError, match="drtune supervised must be >= 1"):
        make_estimator("drtune", supervised=0)


# ReFL


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", ["cond", "weights"])
def test_refl_is_autograd_through_one_late_prediction(wrt, sampler):
    problem, loss = tiny_problem(wrt, steps=3, sampler=sampler), smooth_loss()
    chain, estimator = problem.chain, make_estimator("refl", last=2, seed=4)
    drawn = []
    for _ in range(2):
        estimate = estimator(problem, loss)
        (k,) = estimate.graph_steps
        drawn.append(k)
        assert estimate.nfe_forward == k + 1 and estimate.nfe_backward == 1
        z = problem.latent.detach()
        with torch.no_grad():
            for j in range(k):
                z = chain.step(z, j, problem.cond)
        x0_hat = _x0_hat(chain, z, k, problem.cond)
        torch.testing.assert_close(estimate.sample, x0_hat.detach(), rtol=1e-12, atol=1e-12)
        assert relative_error(estimate.grads, _grads(loss(x0_hat), problem)) <= 1e-12
    assert sorted(drawn) == [1, 2], drawn  # both steps of the window T-2..T-1
    with pytest.raises(NotApplicable, match="initial latent does not reach the loss"):
        estimator(tiny_problem("latent", steps=2), loss)


class _Cheap(nn.Module):
    """A stand-in network, cheap enough for many draws."""

    def forward(self, x, t, cond):
        return torch.tanh(x * cond.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize(("last", "window"), [(3, {5, 6, 7}), (20, set(range(8)))])
def test_refl_draws_uniformly_from_the_last_steps(last, window):
    chain = DDIM(_Cheap(), 8, TINY_CONFIG["scheduler"])
    problem = Problem(
        chain, torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.ones(2, 2, 3, dtype=torch.float64), "cond"
    )
    estimator = make_estimator("refl", last=last, seed=0)
    counts = Counter(estimator(problem, smooth_loss()).graph_steps[0] for _ in range(80 * len(window)))
    assert set(counts) == window, counts
    assert min(counts.values()) >= 40, counts  # about 80 each


# training-free guidance


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_with_scale_zero_is_the_plain_sample(sampler):
    chain, latent, cond = tiny_problem_parts(steps=3, sampler=sampler)
    sample, stats = guided_sample(chain, latent, cond, smooth_loss(), scale=0.0)
    assert torch.equal(sample, chain.trajectory(latent, cond)[0])
    assert stats["nfe_forward"] == 3 and stats["nfe_backward"] == 3 and len(stats["loss"]) == 3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_gradient_matches_finite_differences(sampler):
    chain, z, cond = tiny_problem_parts(steps=2, sampler=sampler)
    loss = smooth_loss()
    eps, value, g = guidance_gradient(chain, z, 1, cond, loss)
    with torch.no_grad():
        assert float(value) == pytest.approx(float(loss(_x0_hat(chain, z, 1, cond))), rel=1e-12)
        direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
        h = 1e-6
        plus, minus = (
            float(loss(chain.predicted_sample(z + s * h * direction, 1, chain.predict(z + s * h * direction, 1, cond))))
            for s in (1, -1)
        )
    numeric = (plus - minus) / (2 * h)
    assert float((g * direction).sum()) == pytest.approx(numeric, rel=1e-6)
    assert chain.meter.backward == 1 and chain.meter.graph_steps == [1]


def test_guided_step_moves_the_output_by_the_scheduled_gradient():
    chain, latent, cond = tiny_problem_parts(steps=2)
    loss = smooth_loss()
    sample, _ = guided_sample(chain, latent, cond, loss, scale=0.3, schedule="increase")
    ratios = [chain.alphas_cumprod[k] / chain.alphas_cumprod[k + 1] for k in range(2)]
    assert schedule_weights(chain, "increase") == pytest.approx([2 * r / sum(ratios) for r in ratios])
    assert ratios[1] > ratios[0]
    z = latent
    for k in range(2):
        z_in = z.detach().requires_grad_()
        eps = _net_eps(chain, z_in, k, cond)
        (g,) = torch.autograd.grad(
            loss((z_in - math.sqrt(1 - chain.alphas_cumprod[k]) * eps) / math.sqrt(chain.alphas_cumprod[k])), z_in
        )
        with torch.no_grad():
            z = chain.update(z, k, eps) - 0.3 * 2 * ratios[k] / sum(ratios) * g
    torch.testing.assert_close(sample, z, rtol=1e-12, atol=1e-12)


def test_time_travel_renoises_with_the_generator_and_counts_every_call():
    chain, latent, cond = tiny_problem_parts(steps=1)
    loss = smooth_loss()
    runs = [
        guided_sample(chain, latent, cond, loss, scale=0.2, repeats=3, generator=torch.Generator().manual_seed(9))
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1]["nfe_forward"] == 3 and runs[0][1]["nfe_backward"] == 3
    generator, back = torch.Generator().manual_seed(9), chain.alphas_cumprod[0] / chain.alphas_cumprod[1]
    z = z_next = latent
    for r in range(3):
        if r:
            z = math.sqrt(back) * z_next + math.sqrt(1 - back) * torch.randn(
                z.shape, generator=generator, dtype=z.dtype
            )
        eps, _, g = guidance_gradient(chain, z, 0, cond, loss)
        z_next = chain.update(z, 0, eps) - 0.2 * g
    torch.testing.assert_close(runs[0][0], z_next, rtol=1e-12, atol=1e-12)  # DDIM's re-noising written out
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        guided_sample(chain, latent, cond, loss, scale=0.2, repeats=2)


# Picard sweeps and the warm-started shortcut


def test_batched_sweep_equals_per_step_calls_and_diffusers_update():
    chain, latent, cond = tiny_problem_parts(steps=4)
    states = _states(chain, latent, cond)
    chain.meter.forward = 0
    with torch.no_grad():
        batched = picard.batched_predictions(chain, states, cond)
        assert chain.meter.forward == 4
        for k in range(4):
            torch.testing.assert_close(batched[k], chain.predict(states[k], k, cond), rtol=1e-12, atol=1e-12)
    scheduler = DDIMParallelScheduler(**TINY_CONFIG["scheduler"])
    scheduler.set_timesteps(4)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the chain's schedule in float64
    assert scheduler.timesteps.tolist() == chain.timesteps[:4]
    timesteps = scheduler.timesteps.repeat_interleave(2)
    reference = scheduler.batch_step_no_noise(torch.cat(batched), timesteps, torch.cat(states[:4]))
    # diffusers' batched step takes alpha = 1 past t = 0, whatever set_alpha_to_one says: compare the first T - 1 steps
    swept = picard.sweep(chain, states, cond)
    torch.testing.assert_close(torch.cat(swept[1:4]), reference[:6], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.5), ("flow_euler", 0.0)])
def test_picard_refresh_converges_to_the_sequential_pass(sampler, eta):
    chain, latent, cond = tiny_problem_parts(steps=4, eta=eta, sampler=sampler)
    exact = _states(chain, latent, cond)
    nudged = cond + 0.3 * torch.randn(cond.shape, generator=torch.Generator().manual_seed(2), dtype=cond.dtype)
    states = _states(chain, latent, nudged)
    errors = [max(float((s - e).norm() / e.norm()) for s, e in zip(states, exact))]
    with torch.no_grad():
        for _ in range(4):
            states = picard.sweep(chain, states, cond)
            errors.append(max(float((s - e).norm() / e.norm()) for s, e in zip(states, exact)))
    print(f"Picard refresh error vs sweeps J=0..4 ({sampler}, eta={eta}): {errors}")
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] <= 1e-12
    refreshed, residual = picard.refresh(chain, exact, cond, sweeps=1)
    assert residual <= 1e-12 and max(float((s - e).norm() / e.norm()) for s, e in zip(refreshed, exact)) <= 1e-12


def test_warm_shortcut_refreshes_exactly_and_falls_back_when_stale():
    problem, loss = tiny_problem("cond", steps=3), smooth_loss()
    nearby = Problem(problem.chain, problem.latent, problem.cond + 0.05, "cond")
    expected = make_estimator("shortcut")(nearby, loss)

    exact = make_estimator("shortcut_warm", sweeps=3)
    first = exact(problem, loss)
    assert exact.last_refresh.fresh and first.nfe_forward == 3 + 1 and exact.depth(first, 3) == 3 + 2
    warm = exact(nearby, loss)
    assert not exact.last_refresh.fresh and exact.last_refresh.residual <= 1e-2
    assert warm.nfe_forward == 3 * 3 + 1 and exact.depth(warm, 3) == 3 + 2
    assert relative_error(warm.grads, expected.grads) <= 1e-12
    assert float((warm.sample - expected.sample).abs().max()) <= 1e-12

    other = Problem(problem.chain, -problem.latent, problem.cond + 0.05, "cond")
    one_sweep = make_estimator("shortcut_warm", sweeps=1, tolerance=1e-3)
    one_sweep(problem, loss)
    fallback = one_sweep(other, loss)
    assert one_sweep.last_refresh.fresh and one_sweep.last_refresh.residual > 1e-3
    assert fallback.nfe_forward == 3 + 3 + 1 and one_sweep.depth(fallback, 3) == 1 + 3 + 2
    assert relative_error(fallback.grads, make_estimator("shortcut")(other, loss).grads) <= 1e-12

    trusting = make_estimator("shortcut_warm", sweeps=1, tolerance=math.inf)
    trusting(problem, loss)
    stale = trusting(other, loss)
    assert not trusting.last_refresh.fresh and trusting.depth(stale, 3) == 1 + 2
    assert relative_error(stale.grads, fallback.grads) > 1e-3
    trusting(Problem(problem.chain, problem.latent[:1], problem.cond[:1], "cond"), loss)
    assert trusting.last_refresh.fresh and trusting.last_refresh.sweeps == 0  # a new batch shape

"""`full` against finite differences and `shortcut` against its closed form, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import smooth_loss, tiny_problem_parts

from sdo import Problem, make_estimator


def _loss_at(chain, latent, cond, loss):
    with torch.no_grad():
        return float(loss(chain.sample(latent, cond, graph_from=None)))


def _directional_fd(problem: Problem, loss, direction: list[torch.Tensor], h: float = 1e-6) -> float:
    """Central difference of the loss along `direction` in the problem's parameters."""
    params = problem.params
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(sign * h * v)
        values.append(_loss_at(problem.chain, problem.latent, problem.cond, loss))
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(sign * h * v)
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_full_matches_finite_differences(wrt, eta):
    chain, latent, cond = tiny_problem_parts(steps=3, eta=eta)
    chain.net.requires_grad_(wrt == "weights")
    problem = Problem(chain, latent, cond, wrt)
    loss = smooth_loss()
    estimate = make_estimator("full")(problem, loss)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        numeric = _directional_fd(problem, loss, direction)
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)
    assert estimate.nfe_forward == 3 and estimate.nfe_backward == 3


def _guided_eps(chain, z, k, cond):
    """Guided noise prediction computed from the network directly, not through the chain."""
    t = torch.full((z.shape[0],), float(chain.timesteps[k]), dtype=z.dtype)
    uncond = chain.net(z, t, chain.null_cond.expand_as(cond))
    return uncond + chain.guidance * (chain.net(z, t, cond) - uncond)


def _sample_grad(chain, latent, cond, loss):
    with torch.no_grad():
        sample = chain.sample(latent, cond, graph_from=None)
    sample.requires_grad_()
    return torch.autograd.grad(loss(sample), sample)[0]


def test_shortcut_latent_matches_closed_form():
    """dL/dz_0 = sqrt(a_T/a_0) * (g + sqrt(a_0) (sigma_1 - sigma_0) J_eps^T g), J at step 0 only."""
    chain, latent, cond = tiny_problem_parts(steps=4)
    loss = smooth_loss()
    estimate = make_estimator("shortcut")(Problem(chain, latent, cond, "latent"), loss)
    g = _sample_grad(chain, latent, cond, loss)
    a, sigma = chain.alphas, chain.sigmas
    _, jvp_term = torch.autograd.functional.vjp(lambda z: _guided_eps(chain, z, 0, cond), latent, g)
    expected = math.sqrt(a[-1] / a[0]) * (g + math.sqrt(a[0]) * (sigma[1] - sigma[0]) * jvp_term)
    torch.testing.assert_close(estimate.grads[0], expected, rtol=1e-10, atol=1e-12)
    assert estimate.nfe_forward == 5 and estimate.nfe_backward == 1 and estimate.graph_steps == [0]


@pytest.mark.parametrize("steps_choice", ["first", "last", "all"])
def test_shortcut_conditioning_matches_closed_form(steps_choice):
    """dL/dc = sqrt(a_T) * sum_{k in S} (sigma_{k+1} - sigma_k) J_{eps_k, c}^T g with every z_k held fixed."""
    chain, latent, cond = tiny_problem_parts(steps=4)
    loss = smooth_loss()
    estimate = make_estimator("shortcut", steps=steps_choice)(Problem(chain, latent, cond, "cond"), loss)
    g = _sample_grad(chain, latent, cond, loss)
    states = [latent]
    with torch.no_grad():
        for k in range(chain.steps):
            states.append(chain.step(states[-1], k, cond))
    chosen = {"first": [0], "last": [3], "all": [0, 1, 2, 3]}[steps_choice]
    sigma = chain.sigmas
    expected = torch.zeros_like(cond)
    for k in chosen:
        _, part = torch.autograd.functional.vjp(lambda c: _guided_eps(chain, states[k], k, c), cond, g)
        expected += math.sqrt(chain.alphas[-1]) * (sigma[k + 1] - sigma[k]) * part
    torch.testing.assert_close(estimate.grads[0], expected, rtol=1e-10, atol=1e-12)
    assert estimate.nfe_backward == len(chosen)


def test_same_seed_gives_bit_identical_samples():
    runs = []
    for _ in range(2):
        chain, latent, cond = tiny_problem_parts(steps=5, eta=0.3, seed=4)
        with torch.no_grad():
            runs.append(chain.sample(latent, cond, graph_from=None))
    assert torch.equal(runs[0], runs[1])


def test_saved_bytes_linear_for_full_flat_for_shortcut():
    counted = {}
    for steps in (4, 16):
        chain, latent, cond = tiny_problem_parts(steps=steps)
        for name in ("full", "shortcut"):
            counted[name, steps] = make_estimator(name)(Problem(chain, latent, cond, "latent"), smooth_loss()).saved_bytes
    assert counted["full", 16] > 3.5 * counted["full", 4]
    assert counted["shortcut", 16] == counted["shortcut", 4]
    assert counted["shortcut", 16] < counted["full", 16] / 10


def test_bad_inputs_are_named():
    chain, latent, cond = tiny_problem_parts(steps=2)
    with pytest.raises(ValueError, match="wrt must be one of"):
        Problem(chain, latent, cond, "noise")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="shortcut steps must be one of"):
        make_estimator("shortcut", steps="middle")
    with pytest.raises(ValueError, match="no parameter of chain.net requires grad"):
        Problem(chain, latent, cond, "weights")

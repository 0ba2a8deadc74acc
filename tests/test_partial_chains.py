"""Partial chains as the SDO authors' scripts run them: the state z_k0 is optimised through the
remaining T - k0 steps, reached by sampling (`init: sample`) or by inverting real images
(`init: invert`); every estimator stays exact there; and the autocast arithmetic the scripts use
runs, counting the steps its gradient scaler skips."""

from __future__ import annotations

import pytest
import torch
from conftest import SAMPLERS, directional_fd, relative_error, run_settings, smooth_loss, tiny_problem_parts
from diffusers import DDIMInverseScheduler, FlowMatchEulerDiscreteScheduler

from sdo import Problem, make_estimator
from sdo.tasks import TASKS


def _tail(sampler: str, steps: int = 5, start: int = 2, wrt: str = "latent", **options):
    """The whole tiny float64 chain, its tail from `start` and the tail's problem (its starting
    state from the warm-up); the whole chain's initial latent is `chain.first_latent`."""
    chain, latent, cond = tiny_problem_parts(steps, sampler=sampler, **options)
    state, past = chain.warm_up(latent, cond, start)
    tail = chain.tail(start, past)
    tail.net.requires_grad_(wrt == "weights")
    chain.first_latent = latent
    return chain, tail, Problem(tail, state, cond, wrt)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
def test_full_on_a_partial_chain_matches_finite_differences(sampler, wrt):
    _, tail, problem = _tail(sampler, wrt=wrt)
    loss = smooth_loss()
    estimate = make_estimator("full")(problem, loss)
    assert estimate.nfe_forward == tail.steps == 3 and estimate.nfe_backward == 3
    generator = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
    analytic = sum(float((g * d).sum()) for g, d in zip(estimate.grads, direction))
    assert analytic == pytest.approx(directional_fd(problem, loss, direction), rel=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_partial_chain_steps_as_diffusers_does_over_the_remaining_timesteps(sampler):
    """The tail from k0 equals diffusers' own scheduler stepping `timesteps[k0:]` from the same
    state, and its sample is the whole chain's."""
    chain, tail, problem = _tail(sampler)
    reference = chain.diffusers_scheduler()
    z = problem.latent.clone()
    with torch.no_grad():
        for k, t in enumerate(reference.timesteps[2:], start=2):
            if isinstance(reference, FlowMatchEulerDiscreteScheduler):
                reference._step_index = k
            z = reference.step(chain.predict(z, k, problem.cond), t, z).prev_sample
        ours = tail.sample(problem.latent, problem.cond, graph_from=None)
        whole = chain.sample(chain.first_latent, problem.cond, graph_from=None)
    torch.testing.assert_close(ours, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_shortcut_on_a_partial_chain_is_its_closed_form(sampler):
    """dL/dz_k0 = r g + vjp(out_k0, g w_k0): the affine path's coefficients over the remaining
    steps and the first remaining step's network Jacobian."""
    _, tail, problem = _tail(sampler)
    loss = smooth_loss()
    estimate = make_estimator("shortcut")(problem, loss)
    sample = estimate.sample.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(sample), sample)
    through_state, through_out = tail.influence()
    z = problem.latent.detach().requires_grad_()
    (vjp,) = torch.autograd.grad(tail.predict(z, 0, problem.cond), z, g * through_out[0])
    assert relative_error(estimate.grads, [g * through_state + vjp]) < 1e-10
    assert estimate.nfe_forward == 3 and estimate.nfe_backward == 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_adjoint_on_a_partial_chain_converges_to_full(sampler):
    """The adjoint rebuilds the tail's states from its sample back to z_k0: its error against
    full on the same steps falls as the grid is refined (T = 8 from 4, then 32 from 16)."""
    errors = []
    for steps in (8, 32):
        _, _, problem = _tail(sampler, steps=steps, start=steps // 2)
        loss = smooth_loss()
        errors.append(
            relative_error(make_estimator("adjoint")(problem, loss).grads, make_estimator("full")(problem, loss).grads)
        )
    assert errors[1] < errors[0] / 2, errors


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_doodl_and_the_warm_shortcut_run_on_a_partial_chain(sampler):
    """DOODL's EDICT pair starts at x = y = z_k0 and equals autograd through its coupled chain on
    the tail; the warm shortcut refreshed with as many sweeps as steps is the shortcut."""
    from sdo import edict

    _, tail, problem = _tail(sampler, steps=6, start=3)
    loss = smooth_loss()
    z = problem.latent.detach().requires_grad_()
    (exact,) = torch.autograd.grad(loss(edict.sample(tail, z, problem.cond)[0]), z)
    assert relative_error(make_estimator("doodl")(problem, loss).grads, [exact]) < 1e-6
    warm = make_estimator("shortcut_warm", sweeps=3)
    warm(problem, loss)
    assert relative_error(warm(problem, loss).grads, make_estimator("shortcut")(problem, loss).grads) < 1e-8


def test_a_multistep_tail_carries_the_warm_up_s_earlier_pair():
    """DPM-Solver++ 2M from k0: the first remaining step uses the data prediction of step k0 - 1,
    held as a constant from the warm-up, so the tail samples what the whole chain samples."""
    chain, tail, problem = _tail("dpmpp_2m", steps=6, start=3)
    assert len(tail.past) == 1 and not tail.past[0][0].requires_grad
    with torch.no_grad():
        whole = chain.sample(chain.first_latent, problem.cond, graph_from=None)
        ours = tail.sample(problem.latent, problem.cond, graph_from=None)
    torch.testing.assert_close(ours, whole, rtol=1e-10, atol=1e-10)


def test_ddim_inversion_is_diffusers_inverse_scheduler_step_by_step():
    chain, latent, cond = tiny_problem_parts(6, cfg_scale=1.0)
    inversion = chain.inversion(4)
    scheduler = DDIMInverseScheduler.from_config(chain.diffusers_scheduler().config)
    scheduler.set_timesteps(6)
    assert inversion.timesteps == [int(t) for t in scheduler.timesteps[:4]]
    z = latent
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps[:4]):
            out = chain.net(z, torch.full((len(z),), float(t), dtype=z.dtype), cond)
            expected = scheduler.step(out, t, z).prev_sample
            torch.testing.assert_close(inversion.step(z, k, cond), expected, rtol=1e-6, atol=1e-6)
            z = expected


def test_flow_inversion_runs_the_euler_step_backwards():
    """Each inverse step is z' = z + (sigma' - sigma) v(z) along the reversed sigmas; a tiny step
    inverts a forward step to first order."""
    chain, latent, cond = tiny_problem_parts(8, sampler="flow_euler", cfg_scale=1.0)
    inversion = chain.inversion(3)
    sigma = chain.sigmas[::-1]
    z = latent
    with torch.no_grad():
        for k in range(3):
            t = torch.full((len(z),), sigma[k] * 1000, dtype=z.dtype)
            expected = z + (sigma[k + 1] - sigma[k]) * chain.net(z, t, cond)
            torch.testing.assert_close(inversion.step(z, k, cond), expected, rtol=1e-12, atol=1e-12)
            z = expected


def test_the_latent_task_starts_part_way_and_counts_its_warm_up_once():
    """`start_step` 3 of T = 5: two forward calls and one backward an iteration for the shortcut
    (two of each for full), the three warm-up steps counted once, apart; the inverted start names
    both timesteps (the authors' level mismatch)."""
    from sdo.models import load_model

    model = load_model("embedded")
    reward = lambda images: -(images**2).flatten(1).mean(1)  # noqa: E731
    task = TASKS["latent"]
    for method, backwards in (("shortcut", 1), ("full", 2)):
        result = task.run(
            model,
            reward,
            make_estimator(method),
            run_settings(steps=5, iters=2, batch=2),
            task.make_options({"start_step": 3}),
        )
        assert [(r["nfe_forward"], r["nfe_backward"]) for r in result.trace.rows] == [(2, backwards)] * 2
        assert result.warmup["warmup_nfe_forward"] == 3 and result.warmup["warmup_seconds"] > 0
    inverted = task.run(
        model,
        reward,
        make_estimator("shortcut"),
        run_settings(steps=10, iters=1, batch=2),
        task.make_options({"start_step": 2, "init": "invert"}),
    )
    assert inverted.warmup["inverted_to_timestep"] == 101 and inverted.warmup["denoised_from_timestep"] == 701
    with pytest.raises(ValueError, match="truncation"):
        TASKS["finetune"].make_options({"start_step": 2})


@pytest.mark.parametrize("precision", ["fp16-autocast", "bf16-autocast"])
def test_autocast_runs_as_the_authors_run_it_and_stays_near_fp32(precision):
    """Under autocast (with a gradient scaler for float16) the latent task's gradient stays
    within a few percent of float32's, and a step whose scaled gradient is not finite is skipped
    and counted, not a divergence."""
    from sdo.models import load_model

    model = load_model("embedded")
    reward = lambda images: -(images**2).flatten(1).mean(1)  # noqa: E731
    task, options = TASKS["latent"], TASKS["latent"].make_options({})
    runs = {
        p: task.run(
            model, reward, make_estimator("shortcut"), run_settings(steps=4, iters=1, batch=2, precision=p), options
        )
        for p in ("fp32", precision)
    }
    ours, theirs = (runs[p].trace.rows[0] for p in (precision, "fp32"))
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=0.05) and not ours["skipped"]
    if precision == "fp16-autocast":

        class SometimesHuge:
            """A reward whose iteration-1 gradient overflows float16 (the loop says the iteration)."""

            iteration = 0

            def at_iteration(self, i):
                self.iteration = i

            def __call__(self, images):
                return -(images**2).flatten(1).mean(1) * (1e30 if self.iteration == 1 else 1.0)

        result = task.run(
            model,
            SometimesHuge(),
            make_estimator("shortcut"),
            run_settings(steps=4, iters=3, batch=2, precision=precision, eval_every=0),
            options,
        )
        assert result.trace.skipped_steps >= 1 and len(result.trace.rows) == 3
        assert sum(row["skipped"] for row in result.trace.rows) == result.trace.skipped_steps

"""Every estimator proven exact against an independent reference, or measured against `full`."""

from __future__ import annotations

import pytest
import torch
from conftest import SAMPLERS, relative_error, smooth_loss, tiny_problem

from sdo import NotApplicable, Problem, edict, make_estimator
from sdo.estimators.adjoint import reconstruction_error
from sdo.memory import saved_bytes

KINDS = ["latent", "cond", "weights"]


def _autograd(problem: Problem, sample: torch.Tensor, loss) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss(sample), problem.params, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", KINDS)
def test_checkpointed_full_equals_full(wrt, sampler):
    problem = tiny_problem(wrt, steps=4, sampler=sampler)
    plain = make_estimator("full")(problem, smooth_loss())
    checkpointed = make_estimator("full", checkpoint=True)(problem, smooth_loss())
    assert relative_error(checkpointed.grads, plain.grads) <= 1e-10
    assert checkpointed.nfe_forward == 8 and checkpointed.nfe_backward == 4


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", ["cond", "weights"])
def test_truncated_equals_reference_that_detaches_the_head(wrt, sampler):
    problem = tiny_problem(wrt, steps=5, sampler=sampler)
    chain, loss = problem.chain, smooth_loss()
    assert (
        relative_error(
            make_estimator("truncated", tail=5)(problem, loss).grads, make_estimator("full")(problem, loss).grads
        )
        <= 1e-12
    )
    z = problem.latent
    for k in range(5):
        z = chain.step(z, k, problem.cond)
        if k < 3:
            z = z.detach()
    estimate = make_estimator("truncated", tail=2)(problem, loss)
    assert relative_error(estimate.grads, _autograd(problem, z, loss)) <= 1e-12
    assert estimate.graph_steps == [3, 4] and estimate.nfe_backward == 2


def test_truncated_latent_needs_the_whole_chain():
    problem = tiny_problem("latent", steps=4)
    with pytest.raises(NotApplicable, match="cannot reach the initial latent"):
        make_estimator("truncated", tail=3)(problem, smooth_loss())
    full = make_estimator("full")(problem, smooth_loss())
    assert relative_error(make_estimator("truncated", tail=4)(problem, smooth_loss()).grads, full.grads) <= 1e-12


def test_randomized_truncation_draws_one_contiguous_tail_per_call():
    problem = tiny_problem("cond", steps=6)
    estimator = make_estimator("truncated", tail=4, randomize=True, seed=1)
    drawn = set()
    for _ in range(12):
        steps = estimator(problem, smooth_loss()).graph_steps
        assert steps == list(range(6 - len(steps), 6)), steps
        drawn.add(len(steps))
    assert drawn == {1, 2, 3, 4}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_edict_inverts_the_whole_chain(sampler):
    problem = tiny_problem("latent", steps=8, sampler=sampler)
    chain, cond = problem.chain, problem.cond
    with torch.no_grad():
        x, y = edict.sample(chain, problem.latent, cond)
        for k in reversed(range(chain.steps)):
            x, y = edict.invert(chain, x, y, k, cond)
    for rebuilt in (x, y):
        assert float((rebuilt - problem.latent).norm() / problem.latent.norm()) <= 1e-8


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", KINDS)
def test_doodl_equals_autograd_through_the_coupled_chain(wrt, sampler):
    problem = tiny_problem(wrt, steps=4, sampler=sampler)
    loss = smooth_loss()
    estimate = make_estimator("doodl")(problem, loss)
    x, _ = edict.sample(problem.chain, problem.latent, problem.cond)
    assert relative_error(estimate.grads, _autograd(problem, x, loss)) <= 1e-9
    assert estimate.nfe_forward == 6 * 4 and estimate.nfe_backward == 2 * 4


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_adjoint_converges_to_full_as_the_grid_is_refined(sampler):
    """The adjoint rebuilds states by inverting each step (DDIM inversion; z - (sigma' - sigma) v
    for flow matching): its error against full at least halves as T doubles, to 2% at T = 32
    (0.0099 for ddim, 0.00043 for flow_euler), for the weights (tests/test_samplers.py checks the
    latent and the conditioning on every sampler)."""
    errors, reconstruction, wrt = [], [], "weights"
    for steps in (8, 16, 32):
        problem = tiny_problem(wrt, steps=steps, perturb=0.0, sampler=sampler, batch=1)
        loss = smooth_loss()
        adjoint = make_estimator("adjoint")(problem, loss)
        errors.append(relative_error(adjoint.grads, make_estimator("full")(problem, loss).grads))
        reconstruction.append(reconstruction_error(problem))
    assert all(later <= earlier / 2 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] <= 2e-2
    assert all(later < earlier for earlier, later in zip(reconstruction, reconstruction[1:])), reconstruction


def _literal_shortcut(problem: Problem, graph_step: int | None, loss) -> list[torch.Tensor]:
    """The released rule written out: one network call keeps its graph (input detached unless it
    is the latent), every other call is detached, and the affine update carries the graph."""
    chain, z = problem.chain, problem.latent
    for k in range(chain.steps):
        if k == graph_step:
            eps = chain.predict(z if (problem.wrt == "latent" and k == 0) else z.detach(), k, problem.cond)
        else:
            with torch.no_grad():
                eps = chain.predict(z.detach(), k, problem.cond)
        z = chain.update(z, k, eps)
    return list(torch.autograd.grad(loss(z), problem.params, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("wrt", ["cond", "weights"])
def test_shortcut_all_is_the_sum_of_per_step_terms(wrt, sampler):
    problem = tiny_problem(wrt, steps=4, sampler=sampler)
    loss = smooth_loss()
    terms = [_literal_shortcut(problem, k, loss) for k in range(4)]
    expected = [sum(parts) for parts in zip(*terms)]
    assert relative_error(make_estimator("shortcut", at="all")(problem, loss).grads, expected) <= 1e-10
    assert relative_error(make_estimator("shortcut", at="first")(problem, loss).grads, terms[0]) <= 1e-10
    assert relative_error(make_estimator("shortcut", at="last")(problem, loss).grads, terms[-1]) <= 1e-10


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shortcut_latent_first_is_the_released_rule(sampler):
    problem = tiny_problem("latent", steps=4, sampler=sampler)
    loss = smooth_loss()
    expected = _literal_shortcut(problem, 0, loss)
    assert relative_error(make_estimator("shortcut")(problem, loss).grads, expected) <= 1e-10


def test_shortcut_random_is_an_unbiased_draw_of_all():
    """Each draw is T times one step's term, the terms sum to `all`, and every step is drawn: so
    the draws average to `all` exactly in expectation (each step with probability 1 / T)."""
    from sdo.estimators.shortcut import Replay

    class OneStep(Replay):
        name = "one_step"

        def __init__(self, k):
            self.k = k

        def chosen(self, problem):
            return [self.k], 1.0

    problem = tiny_problem("cond", steps=4)
    loss = smooth_loss()
    terms = [OneStep(k)(problem, loss).grads[0] for k in range(4)]
    torch.testing.assert_close(
        sum(terms), make_estimator("shortcut", at="all")(problem, loss).grads[0], rtol=1e-10, atol=1e-12
    )
    estimator = make_estimator("shortcut", at="random", seed=3)
    drawn = []
    for _ in range(16):
        draw = estimator(problem, loss).grads[0]
        matches = [k for k, term in enumerate(terms) if torch.allclose(draw, 4 * term, rtol=1e-10, atol=1e-12)]
        assert len(matches) == 1
        drawn += matches
    assert set(drawn) == {0, 1, 2, 3}


ESTIMATOR_SPECS = {
    "full": {},
    "full+checkpoint": {"checkpoint": True},
    "adjoint": {},
    "doodl": {},
    "shortcut": {},
    "shortcut+all": {"at": "all"},
}


@pytest.mark.parametrize("wrt", ["latent", "weights"])
def test_saved_bytes_scale_as_the_design_says(wrt):
    counted = {}
    for steps in (4, 10):
        problem = tiny_problem(wrt, steps=steps)
        for label, spec in ESTIMATOR_SPECS.items():
            name = label.split("+")[0]
            counted[label, steps] = saved_bytes(make_estimator(name, **spec), problem, smooth_loss())
    state_bytes = problem.latent.numel() * problem.latent.element_size()
    for label in ("adjoint", "doodl", "shortcut", "shortcut+all"):
        assert counted[label, 10] <= 1.1 * counted[label, 4], (label, counted)
    # checkpointing keeps the 6 extra states and nothing else that grows with T
    growth = counted["full+checkpoint", 10] - counted["full+checkpoint", 4]
    assert 0 < growth <= 6 * state_bytes * 1.05, (growth, state_bytes)
    per_step = (counted["full", 10] - counted["full", 4]) / 6
    assert per_step > 10 * state_bytes and counted["full", 10] > 2 * counted["full", 4]

"""The meters stay out of what they measure: no timed gradient runs under saved-tensor hooks,
and the plain diffusers loops the bench times beside the project's estimators give the same
gradients."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import relative_error, smooth_loss, tiny_problem

from evals.bench import measure
from evals.plain_loop import plain_gradient, plain_rule_for
from sdo import make_estimator
from sdo.memory import hooks_active
from sdo.tasks.loop import optimise

SLOW = 0.3  # seconds a probe loss sleeps when it runs under hooks


class ProbeLoss:
    """`smooth_loss`, noting for each call whether saved-tensor hooks were active, and sleeping
    when they were, so a hooked call inside a timed region would show in its seconds."""

    def __init__(self):
        self.loss, self.hooked = smooth_loss(), []

    def __call__(self, sample):
        self.hooked.append(hooks_active())
        if self.hooked[-1]:
            time.sleep(SLOW)
        return self.loss(sample)


@pytest.mark.parametrize("method", ["full", "shortcut", "adjoint"])
def test_no_timed_iteration_runs_under_saved_tensor_hooks(method):
    problem = tiny_problem("cond", steps=3)
    cond = problem.cond
    probe, iters = ProbeLoss(), 3
    optimizer = torch.optim.SGD([cond], lr=1e-3)
    trace = optimise(make_estimator(method), lambda i: problem, [cond], probe, optimizer, iters)
    assert probe.hooked.count(True) == 1 and probe.hooked.count(False) == iters
    assert trace.saved_bytes > 0
    assert all(row["seconds"] < SLOW for row in trace.rows), [row["seconds"] for row in trace.rows]


def test_no_timed_bench_round_runs_under_saved_tensor_hooks():
    problem, probe = tiny_problem("latent", steps=3), ProbeLoss()
    row = measure(make_estimator("full"), problem, probe, reference=None, rounds=3, plain="full")
    assert probe.hooked.count(True) == 1 and row["saved_bytes"] > 0
    assert row["seconds"] < SLOW and row["plain_seconds"] < SLOW
    assert row["plain_rel_error"] < 1e-5


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
@pytest.mark.parametrize("rule", ["full", "shortcut"])
def test_plain_loops_give_the_project_gradients(rule, wrt):
    """The loops over `DDIMScheduler.step` (float32 schedule) match the project's float64
    chain to the float32 round-off; a wrong rule would be off by order one."""
    problem, loss = tiny_problem(wrt, steps=4), smooth_loss()
    ours = make_estimator(rule)(problem, loss).grads
    assert relative_error(plain_gradient(rule, problem, loss), ours) < 1e-5
    other = make_estimator("shortcut" if rule == "full" else "full")(problem, loss).grads
    assert relative_error(plain_gradient(rule, problem, loss), other) > 1e-3


def test_plain_rule_names_only_the_variants_it_mirrors():
    assert plain_rule_for("full", {}) == "full" and plain_rule_for("full", {"checkpoint": True}) is None
    assert plain_rule_for("shortcut", {"at": "first"}) == "shortcut" and plain_rule_for("shortcut", {"at": "all"}) is None
    assert plain_rule_for("adjoint", {}) is None

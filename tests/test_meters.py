"""The meters stay out of what they measure: no timed gradient runs under saved-tensor hooks,
the plain diffusers loops the bench times beside the project's estimators give the same
gradients, and the backward weight times a backward alone against a forward."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import relative_error, smooth_loss, tiny_problem

from evals.measure import backward_cost, measure
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
    assert trace.saved_bytes > 0  # the one untimed call under hooks...
    assert probe.hooked.count(True) == 1 and probe.hooked.count(False) == iters  # ...and every timed one without


def test_no_timed_bench_round_runs_under_saved_tensor_hooks():
    problem, probe = tiny_problem("latent", steps=3), ProbeLoss()
    row = measure(make_estimator("full"), problem, probe, reference=None, rounds=3, plain="full")
    assert probe.hooked.count(True) == 1 and row["saved_bytes"] > 0  # the untimed call alone ran under hooks
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
    assert (
        plain_rule_for("shortcut", {"at": "first"}) == "shortcut" and plain_rule_for("shortcut", {"at": "all"}) is None
    )
    assert plain_rule_for("adjoint", {}) is None


class Clock:
    """Virtual seconds: a paced network advances it, a timed call reads it."""

    now = 0.0
    backward_costs: list[float] = []  # the next backwards' costs; 2 once they run out

    @classmethod
    def timed(cls, call, device="cpu"):
        start = cls.now
        result = call()
        return cls.now - start, result


class _PacedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        Clock.now += Clock.backward_costs.pop(0) if Clock.backward_costs else 2.0
        return grad


class Paced(torch.nn.Module):
    """A network whose forward costs 1 virtual second and whose backward 2."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, z, t, cond):
        Clock.now += 1.0
        return _PacedBackward.apply(self.inner(z, t, cond))


@pytest.mark.parametrize("wrt", ["latent", "weights"])
def test_the_backward_weight_is_a_backward_against_a_forward(wrt, monkeypatch):
    """A backward that costs twice a forward weighs 2, whatever the graph's forward costs."""
    monkeypatch.setattr("evals.measure.timed", Clock.timed)
    problem = tiny_problem(wrt, steps=4, cfg_scale=1.0)
    problem.chain.net = Paced(problem.chain.net)

    def loss(sample):  # decode and reward costing 3 virtual seconds, with their backward
        Clock.now += 3.0
        return smooth_loss()(sample)

    row = backward_cost(problem, loss, rounds=9, calls=2)
    assert row["backward_vs_forward"] == row["backward_vs_forward_low"] == row["backward_vs_forward_high"] == 2.0
    assert row["graph_vs_forward"] == 1.0 and row["forward_seconds"] == 1.0 and row["rounds"] == 9
    assert row["loss_vs_forward"] == 3.0


def test_the_backward_weight_s_interval_is_the_median_s_order_statistics(monkeypatch):
    """Nine rounds whose backwards cost 1, 2, ..., 9 forwards (shuffled): the weight is their
    median, 5, and its 95% interval the 2nd and 8th order statistics, [2, 8]."""
    monkeypatch.setattr("evals.measure.timed", Clock.timed)
    problem = tiny_problem("latent", steps=4, cfg_scale=1.0)
    problem.chain.net = Paced(problem.chain.net)
    monkeypatch.setattr(Clock, "backward_costs", [1.0] + [4.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 5.0])  # warm-up first
    row = backward_cost(problem, smooth_loss(), rounds=9, calls=1)
    assert (row["backward_vs_forward_low"], row["backward_vs_forward"], row["backward_vs_forward_high"]) == (
        2.0,
        5.0,
        8.0,
    )

"""The online fidelity audit: it measures what the bench measures on the same batch, and a
fallback iteration steps with full backpropagation's gradient exactly, its cost counted."""

from __future__ import annotations

import pytest
import torch
from conftest import smooth_loss, tiny_problem

from evals.bench import measure
from sdo import make_estimator
from sdo.tasks.loop import Audit, optimise


def _optimise(problem, estimator, audit, lr=0.0, iters=1):
    cond = problem.cond
    optimizer = torch.optim.SGD([cond], lr=lr)
    return optimise(estimator, lambda i: problem, [cond], smooth_loss(), optimizer, iters, audit=audit)


@pytest.mark.parametrize("method, options", [("shortcut", {}), ("adjoint", {}), ("truncated", {"tail": 2})])
def test_the_audit_reproduces_the_bench_cosine_on_the_same_batch(method, options):
    problem = tiny_problem("cond", steps=4)
    reference = make_estimator("full")(problem, smooth_loss()).grads
    bench = measure(make_estimator(method, **options), problem, smooth_loss(), reference, rounds=1)
    trace = _optimise(problem, make_estimator(method, **options), Audit(every=1))
    (audit,) = trace.audits
    assert audit["cosine"] == pytest.approx(bench["cosine"], abs=1e-12)
    assert audit["rel_error"] == pytest.approx(bench["rel_error"], rel=1e-10)
    assert audit["norm_ratio"] == pytest.approx(bench["norm_ratio"], rel=1e-10)
    assert not audit["fallback"] and audit["cosine"] < 1 - 1e-6  # not full itself
    # the audit is not training cost: the iteration counts the estimator's evaluations only
    estimate = make_estimator(method, **options)(problem, smooth_loss())
    assert (trace.rows[0]["nfe_forward"], trace.rows[0]["nfe_backward"]) == (
        estimate.nfe_forward,
        estimate.nfe_backward,
    )


def test_a_fallback_iteration_steps_with_the_exact_gradient_and_counts_its_cost():
    problem = tiny_problem("cond", steps=3)
    before = problem.cond.detach().clone()
    exact = make_estimator("full")(problem, smooth_loss())
    trace = _optimise(problem, make_estimator("shortcut"), Audit(every=1, fallback_below=1.0), lr=1.0)
    (audit,) = trace.audits
    assert audit["fallback"]
    assert torch.equal(problem.cond.detach(), before - exact.grads[0])
    shortcut = make_estimator("shortcut")(tiny_problem("cond", steps=3), smooth_loss())
    row = trace.rows[0]
    assert row["nfe_forward"] == shortcut.nfe_forward + exact.nfe_forward
    assert row["nfe_backward"] == shortcut.nfe_backward + exact.nfe_backward
    assert row["seconds"] >= audit["audit_seconds"]


def test_above_the_threshold_the_estimate_is_kept_and_audits_follow_their_period():
    problem = tiny_problem("cond", steps=3)
    estimate = make_estimator("shortcut")(problem, smooth_loss())
    trace = _optimise(problem, make_estimator("shortcut"), Audit(every=2, fallback_below=-1.0), lr=1e-3, iters=3)
    assert [a["iter"] for a in trace.audits] == [0, 2] and not any(a["fallback"] for a in trace.audits)
    assert trace.rows[0]["grad_norm"] == pytest.approx(float(estimate.grads[0].double().norm()), rel=1e-12)
    assert trace.rows[0]["nfe_backward"] == estimate.nfe_backward
    with pytest.raises(ValueError, match="audit_every must be >= 1"):
        Audit(every=0)
    with pytest.raises(ValueError, match="cosine threshold"):
        Audit(every=1, fallback_below=2)


def test_checkpointed_audits_give_the_same_cosine():
    problem = tiny_problem("weights", steps=3)
    plain = _optimise_weights(problem, Audit(every=1))
    checkpointed = _optimise_weights(problem, Audit(every=1, checkpoint=True))
    assert plain.audits[0]["cosine"] == pytest.approx(checkpointed.audits[0]["cosine"], abs=1e-10)


def _optimise_weights(problem, audit):
    params = problem.params
    optimizer = torch.optim.SGD(params, lr=0.0)
    return optimise(make_estimator("shortcut"), lambda i: problem, params, smooth_loss(), optimizer, 1, audit=audit)


def test_full_backpropagation_is_not_audited_against_itself():
    problem = tiny_problem("cond", steps=3)
    assert _optimise(problem, make_estimator("full"), Audit(every=1), iters=2).audits == []
    assert len(_optimise(problem, make_estimator("shortcut"), Audit(every=1), iters=2).audits) == 2


def test_autograd_s_bytes_are_measured_once_per_graph_in_a_process(monkeypatch):
    """The seeds of one job share one measurement of autograd's bytes (they depend on shapes and
    the graph only); another batch, estimator or T is measured anew."""
    import sdo.memory
    import sdo.tasks.loop as loop

    calls = []
    monkeypatch.setattr(sdo.memory, "_MEASURED", {})
    monkeypatch.setattr(loop, "saved_bytes", lambda *args: calls.append(args) or 123)
    for seed in (0, 1):
        trace = _optimise(tiny_problem("cond", steps=3, seed=seed), make_estimator("shortcut"), None)
        assert trace.saved_bytes == 123
    assert len(calls) == 1
    for problem, method in (
        (tiny_problem("cond", steps=4), "shortcut"),
        (tiny_problem("cond", steps=3), "full"),
        (tiny_problem("cond", steps=3, batch=3), "shortcut"),
    ):
        _optimise(problem, make_estimator(method), None)
    assert len(calls) == 4

"""Cost to quality and verdicts on synthetic runs with known answers: paired ratios, censoring,
a method that never reaches the target, ties, interpolation between evaluations, an invalid
start, the reward-hacking guard, and a rerun that gives the same verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evals import analysis as statistics
from evals.analysis import Options

KEY = {"model": "embedded", "task": "latent", "wrt": "latent", "chain": "T10"}
OPTIONS = Options(target_fraction=0.9, resamples=2000)


def _run(
    variant,
    seed,
    rewards,
    cost_per_iter,
    every=1,
    start_deviation=0.0,
    seconds_per_iter=None,
    key=KEY,
    ran_chain=None,
    warmup_cost=0.0,
):
    """A run's evaluation rows (every `every` iterations), its iteration rows (constant cost)
    and its summary row (the chain it ran and its warm-up)."""
    iters = (len(rewards) - 1) * every
    evaluations = [
        {**key, "variant": variant, "seed": seed, "iter": i * every, "reward": r} for i, r in enumerate(rewards)
    ]
    seconds = cost_per_iter / 10 if seconds_per_iter is None else seconds_per_iter
    iterations = [
        {**key, "variant": variant, "seed": seed, "iter": i, "cost": cost_per_iter, "seconds": seconds}
        for i in range(iters)
    ]
    run = {
        **key,
        "variant": variant,
        "seed": seed,
        "status": "ok",
        "start_deviation": start_deviation,
        "sampler": "ddim",
        "start_step": 0,
        "init": "sample",
        "ran_chain": ran_chain or key["chain"],
        "warmup_cost": warmup_cost,
        "warmup_seconds": warmup_cost / 10,
    }
    return evaluations, iterations, run


def _tables(runs):
    evaluations, iterations, summary = [], [], []
    for e, i, r in runs:
        evaluations += e
        iterations += i
        summary.append(r)
    return pd.DataFrame(evaluations), pd.DataFrame(iterations), pd.DataFrame(summary)


def _per_run(runs, options=OPTIONS):
    return statistics.runs_to_target(*_tables(runs), options)


FULL = [0, 5, 9, 10]  # full gains 10: the target is 9, reached at iteration 2


def test_paired_ratio_of_a_method_ten_times_cheaper_holds_the_claim():
    """Every seed: full reaches at iteration 2 (cost 2 x 30), the shortcut at iteration 2 too
    (cost 2 x 3): the ratio is exactly 0.1 on every seed, the interval a point, the claim holds."""
    runs = [_run("full", s, FULL, 30) for s in range(8)] + [_run("shortcut", s, FULL, 3) for s in range(8)]
    per_run = _per_run(runs)
    assert per_run.loc[per_run["variant"] == "full", "cost"].eq(60).all()
    table = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS, claim=0.1)
    row = table[table["threshold"] == 0.1].iloc[0]
    assert (row["ratio"], row["ratio_low"], row["ratio_high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert row["verdict"] == "holds" and row["paired"] == 8 and row["censored_method"] == 0
    assert (row["sampler"], row["start_step"], row["init"]) == ("ddim", 0, "sample")
    assert set(statistics.cost_to_quality(per_run, OPTIONS)["sampler"]) == {"ddim"}
    cheaper = table[table["threshold"] == 1.0].iloc[0]
    assert cheaper["verdict"] == "holds"


def test_ties_give_ratio_one_and_refute_the_claim():
    runs = [_run("full", s, FULL, 30) for s in range(8)] + [_run("shortcut", s, FULL, 30) for s in range(8)]
    table = statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS, claim=0.1)
    claim, cheaper = (table[table["threshold"] == t].iloc[0] for t in (0.1, 1.0))
    assert claim["ratio"] == pytest.approx(1.0) and claim["verdict"] == "refuted"
    assert cheaper["verdict"] == "holds"  # ratio <= 1 holds at a tie: the whole interval sits at 1


def test_the_interval_covers_the_spread_of_paired_ratios():
    """Per-seed ratios 0.05..0.4 (log-spread): the IQM lies inside, the interval spans the
    middle of them, and the claim at 0.1 is inconclusive."""
    ratios = [0.05, 0.06, 0.08, 0.1, 0.12, 0.2, 0.3, 0.4]
    runs = [_run("full", s, FULL, 100) for s in range(8)]
    runs += [_run("shortcut", s, FULL, 100 * r) for s, r in enumerate(ratios)]
    row = statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS).iloc[0]
    middle = np.exp(np.log(sorted(ratios)[2:6]).mean())
    assert row["ratio"] == pytest.approx(middle)
    assert row["ratio_low"] < middle < row["ratio_high"]
    assert 0.05 <= row["ratio_low"] and row["ratio_high"] <= 0.4
    assert row["verdict"] == "inconclusive"


@pytest.mark.parametrize("status", ["diverged", "unstable", "out_of_memory", "failed"])
def test_a_run_that_did_not_end_ok_is_in_no_verdict(status):
    """Seed 0's shortcut run ran away (a huge reward a diverged or unstable run may keep): it is
    left out, so the verdict pairs the seven other seeds and its reward changes nothing."""
    runs = [_run("full", s, FULL, 30) for s in range(8)] + [_run("shortcut", s, FULL, 3) for s in range(1, 8)]
    wild = _run("shortcut", 0, [0, 1e9, 1e9, 1e9], 3)
    wild[2]["status"] = status
    per_run = _per_run([*runs, wild])
    assert set(per_run.loc[per_run["variant"] == "shortcut", "seed"]) == set(range(1, 8))
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS, claim=0.1).iloc[0]
    assert row["paired"] == 7 and row["ratio"] == pytest.approx(0.1)


def test_a_method_that_never_reaches_is_censored_not_dropped():
    """The shortcut never reaches the target on any seed: each ratio is at least its budget over
    full's cost (8 iterations x 30 / 60 = 4), so the claim is refuted, not left out."""
    runs = [_run("full", s, FULL + [10] * 6, 30) for s in range(8)]
    runs += [_run("shortcut", s, [0, 1, 2, 3, 4, 5, 6, 7, 8], 30) for s in range(8)]
    per_run = _per_run(runs)
    ours = per_run[per_run["variant"] == "shortcut"]
    assert not ours["reached"].any() and (ours["cost"] == 8 * 30).all()
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS).iloc[0]
    assert row["censored_method"] == 8 and row["ratio_low"] == pytest.approx(4.0) and math.isinf(row["ratio_high"])
    assert row["verdict"] == "refuted"
    table = statistics.cost_to_quality(per_run, OPTIONS)
    shortcut = table[table["variant"] == "shortcut"].iloc[0]
    assert shortcut["reached"] == 0 and shortcut["runs"] == 8 and math.isnan(shortcut["cost_to_target"])


def test_a_censored_run_with_a_small_budget_leaves_the_verdict_open():
    """Two of eight seeds never reach within a budget of 4 iterations (cost 4 x 1 = 4, ratio >=
    4 / 60): those censored ratios may be anything above 0.067, so the interval's upper limit
    is infinite and the claim at 0.1 cannot hold; the reached seeds are at 0.05."""
    runs = [_run("full", s, FULL, 30) for s in range(8)]
    runs += [_run("shortcut", s, [0, 9.5, 9.6, 9.7, 9.8], 1.5) for s in range(6)]
    runs += [_run("shortcut", s, [0, 1, 2, 3, 4], 1.0) for s in (6, 7)]
    row = statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS).iloc[0]
    assert row["censored_method"] == 2 and row["ratio"] == pytest.approx(0.025)
    assert row["ratio_low"] == pytest.approx(0.025) and math.isinf(row["ratio_high"])
    assert row["verdict"] == "inconclusive"


def test_a_censored_baseline_bounds_the_ratio_from_above():
    """A peer baseline never reaches full's target on seed 0: the shortcut's ratio to it there
    is at most the shortcut's cost over the peer's budget, so the lower limit is open and the
    upper limit finite."""
    runs = [_run("full", s, FULL, 30) for s in range(8)] + [_run("shortcut", s, FULL, 3) for s in range(8)]
    runs += [_run("adjoint", 0, [0, 1, 2, 3], 30)] + [_run("adjoint", s, FULL, 30) for s in range(1, 8)]
    per_run = _per_run(runs)
    assert not per_run[(per_run["variant"] == "adjoint") & (per_run["seed"] == 0)]["reached"].iloc[0]
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS).set_index("peer").loc["adjoint"].iloc[0]
    assert row["censored_reference"] == 1 and row["ratio_low"] == 0 and np.isfinite(row["ratio_high"])
    assert row["ratio"] == pytest.approx(0.1)


def test_the_target_is_full_s_gain_on_each_seed():
    """Seeds whose gains differ tenfold: each seed's target is 90% of full's own gain there, so
    full reaches it on every seed (against a mean gain, the low-gain seeds would never reach),
    and the shortcut is judged against the same target on the same seed."""
    gains = [2, 4, 6, 8, 12, 14, 16, 20]
    runs = [_run("full", s, [0, g / 2, g * 0.95, g], 30) for s, g in enumerate(gains)]
    runs += [_run("shortcut", s, [0, g * 0.95, g, g], 3) for s, g in enumerate(gains)]
    per_run = _per_run(runs)
    full = per_run[per_run["variant"] == "full"].set_index("seed")
    assert full["reached"].all() and (full["iters"] == 2).all()
    assert full["target"].to_numpy() == pytest.approx(0.9 * np.array(gains))
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS).iloc[0]
    assert row["paired"] == 8 and row["censored_method"] == row["censored_reference"] == 0
    assert (row["ratio"], row["ratio_low"], row["ratio_high"]) == pytest.approx((0.05, 0.05, 0.05))


def test_a_seed_where_full_gains_nothing_sets_no_target_for_anyone():
    """Full's reward falls on seed 0: no target there, for either method; the seed is counted
    as `no_target` and the verdict rests on the other seven pairs."""
    runs = [_run("full", 0, [0, -1, -2, -3], 30)] + [_run("full", s, FULL, 30) for s in range(1, 8)]
    runs += [_run("shortcut", s, FULL, 3) for s in range(8)]
    per_run = _per_run(runs)
    seed0 = per_run[per_run["seed"] == 0]
    assert not seed0["has_target"].any() and not seed0["reached"].any()
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS).iloc[0]
    assert row["paired"] == 7 and row["no_target"] == 1 and row["censored_method"] == row["censored_reference"] == 0
    assert row["ratio"] == pytest.approx(0.1) and row["verdict"] == "holds"
    assert statistics.cost_to_quality(per_run, OPTIONS).set_index("variant").loc["shortcut", "reached"] == 7


def test_crossings_between_evaluations_are_interpolated_to_a_whole_iteration():
    """Evaluations every 4 iterations: rewards 0, 6, 10 reach the target 9 between iterations 4
    and 8, at 4 + 4 (9 - 6) / (10 - 6) = 7: the cost through iteration 7, and `resolution` says so."""
    runs = [_run("full", 0, [0, 6, 10], 5, every=4)]
    row = _per_run(runs).iloc[0]
    assert row["reached"] and row["iters"] == 7 and row["cost"] == 7 * 5
    assert row["resolution"] == "interpolated between evaluations every 4"
    assert _per_run([_run("full", 0, FULL, 5)]).iloc[0]["resolution"] == "each iteration"


def test_a_sampler_that_starts_elsewhere_is_no_baseline():
    runs = [_run("full", s, FULL, 30) for s in range(8)] + [_run("shortcut", s, FULL, 3) for s in range(8)]
    runs += [_run("doodl", s, FULL, 100, start_deviation=2.9) for s in range(8)]
    per_run = _per_run(runs)
    table = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS)
    assert set(table.loc[table["peer"] == "doodl", "verdict"]) == {"invalid_start"}
    assert set(table.loc[table["peer"] == "full", "verdict"]) == {"holds"}
    assert not statistics.cost_to_quality(per_run, OPTIONS).set_index("variant").loc["doodl", "valid_start"]


def test_too_few_seeds_are_inconclusive():
    runs = [_run("full", s, FULL, 30) for s in range(2)] + [_run("shortcut", s, FULL, 3) for s in range(2)]
    table = statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS)
    assert set(table["verdict"]) == {"inconclusive"}


def test_the_guard_flags_reward_hacking():
    """The shortcut reaches the target but its distance to real data (2.0) lies above full's
    95% interval (1.0 +- 0.1): reward_hacked; a method as close to real data as full is not."""
    runs = [_run("full", s, FULL, 30) for s in range(4)] + [_run("shortcut", s, FULL, 3) for s in range(4)]
    runs += [_run("honest", s, FULL, 3) for s in range(4)]
    per_run = _per_run(runs)
    distance = {"full": [0.95, 1.0, 1.05, 1.0], "shortcut": [2.0] * 4, "honest": [1.0, 1.02, 0.98, 1.0]}
    summary = pd.DataFrame(
        [
            {**KEY, "variant": v, "seed": s, "status": "ok", "final_nn_distance": d}
            for v, values in distance.items()
            for s, d in enumerate(values)
        ]
    )
    guard = statistics.quality_guard(summary, per_run, "nn_distance", lower_is_better=True).set_index("variant")
    assert guard.loc["shortcut", "reward_hacked"] and not guard.loc["honest", "reward_hacked"]
    assert guard.loc["full", "guard_full_low"] < 1.0 < guard.loc["full", "guard_full_high"] < 2.0
    table = statistics.verdicts(per_run, guard.reset_index(), OPTIONS, subject="shortcut")
    assert table["reward_hacked"].all()


def _counted(variant, seed, backward_per_iter):
    """A run reaching at iteration 2 whose iterations count 10 forwards and `backward_per_iter`
    backwards each (cost comes from the backward weight)."""
    evaluations, iterations, run = _run(variant, seed, FULL, 0)
    for row in iterations:
        del row["cost"]
        row.update(nfe_forward=10, nfe_backward=backward_per_iter, seconds=1.0)
    return evaluations, iterations, run


@pytest.mark.parametrize("interval, verdict", [((1.0, 1.0), "holds"), ((0.5, 2.0), "inconclusive")])
def test_the_backward_weight_s_interval_is_carried_into_the_verdict(interval, verdict):
    """Full: 10 forwards + 10 backwards an iteration, the shortcut 10 + 1, both reaching at
    iteration 2, so the ratio is (10 + w) / (10 + 10 w): 0.55 at the measured w = 1, 0.70 at
    w = 0.5 and 0.40 at w = 2. On the claim <= 0.6 a weight known exactly holds; one whose 95%
    interval is [0.5, 2] leaves it open, with the interval the union [0.40, 0.70]. Seconds
    are untouched."""
    from evals.sweep import with_cost

    runs = [_counted("full", s, 10) for s in range(8)] + [_counted("shortcut", s, 1) for s in range(8)]
    evaluations, iterations, summary = _tables(runs)
    weights = {"w": 1.0, "low": interval[0], "high": interval[1], "graph": 1.0, "loss": 0.0}
    iterations = with_cost(iterations, {("embedded", "latent"): weights})
    per_run = statistics.runs_to_target(evaluations, iterations, summary, OPTIONS)
    row = statistics.verdicts(per_run, pd.DataFrame(), OPTIONS, claim=0.6).iloc[0]
    low, high = (10 + interval[1]) / (10 + 10 * interval[1]), (10 + interval[0]) / (10 + 10 * interval[0])
    assert row["ratio"] == pytest.approx(0.55) and (row["ratio_low"], row["ratio_high"]) == pytest.approx((low, high))
    assert row["verdict"] == verdict and row["seconds_ratio"] == pytest.approx(1.0)


def test_the_same_records_give_the_same_verdicts():
    ratios = [0.05, 0.06, 0.08, 0.1, 0.12, 0.2, 0.3, 0.4]
    runs = [_run("full", s, FULL, 100) for s in range(8)] + [
        _run("shortcut", s, FULL, 100 * r) for s, r in enumerate(ratios)
    ]
    first, second = (statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS) for _ in range(2))
    pd.testing.assert_frame_equal(first, second)


def test_the_cost_unit_counts_graphs_and_the_loss():
    """An iteration of 10 forwards (3 with a graph), 2 backwards and one loss: with a backward
    weight of 1.5, a graph forward costing 1.2 forwards and the loss 0.5 forwards, it costs
    10 + 3 x 0.2 + 2 x 1.5 + 0.5 = 14.1 forward passes; without a measurement it is 10 + 2 x 2."""
    from evals.sweep import with_cost

    rows = pd.DataFrame(
        [
            {
                **KEY,
                "variant": "v",
                "seed": 0,
                "iter": 0,
                "nfe_forward": 10,
                "nfe_graph": 3,
                "nfe_backward": 2,
                "losses": 1,
            }
        ]
    )
    weights = {("embedded", "latent"): {"w": 1.5, "low": 1.0, "high": 2.0, "graph": 1.2, "loss": 0.5}}
    costed = with_cost(rows, weights).iloc[0]
    assert costed["cost"] == pytest.approx(14.1)
    assert (costed["cost_w_low"], costed["cost_w_high"]) == pytest.approx((13.1, 15.1))
    assert with_cost(rows, {}).iloc[0]["cost"] == pytest.approx(14.0)


def test_a_partial_chain_is_judged_on_its_chain_and_against_the_whole_chain_with_its_warm_up():
    """T = 50 from step 45: the shortcut (cost 6 an iteration) and full on the same 5 steps (10)
    each paid a warm-up of 45 forwards; full through the whole chain (100 an iteration) paid none.
    On the same chain the ratio leaves the warm-up out (6 x 2 / (10 x 2) = 0.6); against the whole
    chain it counts it ((12 + 45) / 200 = 0.285), and each row names the chains."""
    key = {**KEY, "chain": "T50-from45"}
    runs = [_run("full", s, FULL, 10, key=key, warmup_cost=45) for s in range(8)]
    runs += [_run("shortcut", s, FULL, 6, key=key, warmup_cost=45) for s in range(8)]
    runs += [_run("full_whole_chain", s, FULL, 100, key=key, ran_chain="T50") for s in range(8)]
    table = statistics.verdicts(_per_run(runs), pd.DataFrame(), OPTIONS, claim=0.1).set_index("peer")
    same, whole = table.loc["full"].iloc[0], table.loc["full_whole_chain"].iloc[0]
    assert same["ratio"] == pytest.approx(0.6) and not same["warmup_counted"]
    assert whole["ratio"] == pytest.approx(57 / 200) and whole["warmup_counted"]
    assert (whole["subject_chain"], whole["peer_chain"]) == ("T50-from45", "T50")
    assert same["verdict"] == "refuted" and whole["verdict"] == "refuted"
    assert table.loc["full_whole_chain"].iloc[1]["verdict"] == "holds"  # cheaper at all
    costs = statistics.cost_to_quality(_per_run(runs), OPTIONS).set_index("variant")
    assert costs.loc["shortcut", "cost_to_target_with_warmup"] == pytest.approx(57)

"""Cost to quality and verdicts on the sweep's tables (the rules: docs/methodology.md; the
numbers: `evals.analysis.kernels`).

Tables are keyed by `KEYS` (model, task, parameter type, chain) and a variant. `runs_to_target`
gives one row per run: its per-seed target (full backpropagation's gain on that seed), whether
and at what cost it reached it, its budget, its warm-up and its start. `cost_to_quality` gives
one row per variant; `verdicts` one row per comparison of the subject with a peer and claim;
`quality_guard` flags reward hacking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evals.analysis.kernels import HEADLINE_SEEDS, iqm, log_ratio_bounds, ratio_interval, verdict

KEYS = ["model", "task", "wrt", "chain"]
COST_UNITS = ("cost", "cost_w_low", "cost_w_high")  # w at its median, and at its interval's ends
WARMUP = {"cost": "warmup_cost", "cost_w_low": "warmup_cost", "cost_w_high": "warmup_cost", "seconds": "warmup_seconds"}


@dataclass(frozen=True)
class Options:
    """`target_fraction` of full's gain; `confidence` of the intervals; bootstrap `resamples`
    and their `seed`; `start_tolerance`: the largest relative distance of a method's starting
    samples from the base sampler's for it to count as a baseline."""

    target_fraction: float = 0.9
    confidence: float = 0.95
    resamples: int = 4000
    seed: int = 0
    start_tolerance: float = 0.2


def _crossing(
    run: pd.DataFrame, iterations: pd.DataFrame, target: float, units: tuple[str, ...]
) -> tuple[bool, dict[str, float], float | None, str]:
    """(reached, spent, iteration, resolution) of one run: `spent` maps each unit to its
    cumulative sum through the iteration where the run reaches `target`, or through its last
    iteration when it never does."""
    run = run.sort_values("iter")
    done = iterations.sort_values("iter")
    totals = {unit: done[unit].cumsum().to_numpy() for unit in units}
    gaps = np.diff(run["iter"].to_numpy())
    resolution = (
        "each iteration"
        if len(gaps) == 0 or gaps.max() <= 1
        else f"interpolated between evaluations every {int(gaps.max())}"
    )
    at = run["reward"].to_numpy() >= target
    if not at.any() or not len(done):
        return (
            False,
            {unit: float(total[-1]) if len(total) else 0.0 for unit, total in totals.items()},
            None,
            resolution,
        )
    first = int(np.argmax(at))
    if first == 0:
        return True, dict.fromkeys(units, 0.0), 0, resolution
    before, after = run.iloc[first - 1], run.iloc[first]
    rise = after["reward"] - before["reward"]
    fraction = 1.0 if rise <= 0 else (target - before["reward"]) / rise
    iteration = int(math.ceil(before["iter"] + fraction * (after["iter"] - before["iter"]) - 1e-9))
    iteration = max(int(before["iter"]) + 1, min(iteration, int(after["iter"])))
    return True, {unit: float(total[iteration - 1]) for unit, total in totals.items()}, iteration, resolution


def _same(frame: pd.DataFrame, key) -> pd.Series:
    return (frame[KEYS] == pd.Series(dict(zip(KEYS, key)))).all(axis=1)


def runs_to_target(
    evaluations: pd.DataFrame, iterations: pd.DataFrame, runs: pd.DataFrame, options: Options, full: str = "full"
) -> pd.DataFrame:
    """One row per run: its target, whether and at what cost (every unit) it reached it, its
    whole budget, its warm-up, its start and final reward, the chain it ran, its start deviation,
    and whether its start is valid. `evaluations` has a row per run x held-out evaluation (KEYS,
    variant, seed, iter, reward); `iterations` a row per run x iteration with its costs; `runs` a
    row per run with `status`, `start_deviation` and, where a partial chain warmed up, its
    `warmup_cost` and `warmup_seconds`."""
    rows = []
    units = (*[unit for unit in COST_UNITS if unit in iterations], "seconds")
    ok = runs[runs["status"] == "ok"]
    for key, group in evaluations.merge(ok[[*KEYS, "variant", "seed"]], on=[*KEYS, "variant", "seed"]).groupby(KEYS):
        base = group[group["variant"] == full]
        if base.empty:
            continue
        ends = base.sort_values("iter").groupby("seed")["reward"].agg(["first", "last"])
        gains = ends["last"] - ends["first"]
        for (variant, seed), run in group.groupby(["variant", "seed"]):
            run = run.sort_values("iter")
            start = float(run["reward"].iloc[0])
            gain = float(gains.get(seed, math.nan))
            target = min(start, float(ends["first"].get(seed, math.nan))) + options.target_fraction * gain
            spent = iterations[
                _same(iterations, key) & (iterations["variant"] == variant) & (iterations["seed"] == seed)
            ]
            if gain > 0:
                reached, costs, iteration, resolution = _crossing(run, spent, target, units)
            else:  # full did not run, or gained nothing, on this seed
                reached, costs, iteration, resolution = False, dict.fromkeys(units, math.nan), None, "no target"
            info = ok[_same(ok, key) & (ok["variant"] == variant) & (ok["seed"] == seed)].iloc[0]
            deviation = float(info.get("start_deviation", 0.0) or 0.0)
            rows.append(
                {
                    **dict(zip(KEYS, key)),
                    "variant": variant,
                    "seed": seed,
                    "target_gain": gain,
                    "has_target": gain > 0,
                    "target": target,
                    "start_reward": start,
                    "final_reward": float(run["reward"].iloc[-1]),
                    "reached": reached,
                    **costs,
                    "iters": iteration,
                    **{f"budget_{unit}": float(spent[unit].sum()) for unit in units},
                    "warmup_cost": _number(info.get("warmup_cost")),
                    "warmup_seconds": _number(info.get("warmup_seconds")),
                    "ran_chain": info.get("ran_chain", key[3]) if isinstance(info.get("ran_chain"), str) else key[3],
                    **{column: info.get(column) for column in CHAIN_COLUMNS},
                    "resolution": resolution,
                    "start_deviation": deviation,
                    "valid_start": deviation <= options.start_tolerance,
                }
            )
    return pd.DataFrame(rows)


CHAIN_COLUMNS = ("sampler", "start_step", "init")  # what a chain label says, as columns of their own


def _chain_columns(runs: pd.DataFrame) -> dict:
    """The sampler, start step and initialisation these runs ran (one per chain), where the rows say."""
    return {column: runs[column].iloc[0] if column in runs else None for column in CHAIN_COLUMNS}


def _number(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _resolution(runs: pd.DataFrame) -> str:
    """How the crossings of these runs were found (see `_crossing`); "no target" without one."""
    targeted = runs.loc[runs["has_target"].astype(bool), "resolution"]
    return str(targeted.iloc[0]) if len(targeted) else "no target"


def paired_bounds(
    method: pd.DataFrame, peer: pd.DataFrame, unit: str, warmup: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per paired seed with a target, the lowest and highest the log cost ratio method / peer
    can be, in `unit`, with each run's warm-up added where `warmup`, and the counts of each
    kind of pair."""
    pairs = method.merge(peer, on="seed", suffixes=("", "_ref"))
    targeted = pairs[pairs["has_target"].astype(bool)]
    extra = WARMUP.get(unit)

    def costs(suffix: str) -> tuple[np.ndarray, np.ndarray]:
        spent = targeted[unit + suffix].to_numpy(dtype=float)
        budget = targeted[f"budget_{unit}{suffix}"].to_numpy(dtype=float)
        if warmup and extra:
            paid = targeted[extra + suffix].to_numpy(dtype=float)
            spent, budget = spent + paid, budget + paid
        return spent, budget

    (ours, ours_budget), (theirs, theirs_budget) = costs(""), costs("_ref")
    low, high, counts = log_ratio_bounds(
        ours,
        targeted["reached"].to_numpy(bool),
        ours_budget,
        theirs,
        targeted["reached_ref"].to_numpy(bool),
        theirs_budget,
    )
    return low, high, {"paired": len(targeted), "no_target": len(pairs) - len(targeted), **counts}


def paired_ratio(
    method: pd.DataFrame, peer: pd.DataFrame, unit: str, options: Options, warmup: bool = False
) -> tuple[float, float, float, dict]:
    """(estimate, lower, upper, counts) of the paired IQM ratio method / peer in `unit` (`cost`
    or `seconds`), warm-ups included where `warmup`. For `cost` the estimate is at the measured
    weight w and the interval is the union of the intervals at w and at both ends of w's
    interval, where runs carry them."""
    units = [u for u in COST_UNITS if u in method and u in peer] if unit == "cost" else [unit]
    intervals, counts = [], None
    for name in units:
        low, high, found = paired_bounds(method, peer, name, warmup)
        intervals.append(ratio_interval(low, high, options.confidence, options.resamples, options.seed))
        counts = counts or found
    estimates, lowers, uppers = zip(*intervals)
    lower = math.nan if any(map(math.isnan, lowers)) else min(lowers)
    upper = math.nan if any(map(math.isnan, uppers)) else max(uppers)
    return estimates[0], lower, upper, counts


def cost_to_quality(per_run: pd.DataFrame, options: Options, full: str = "full") -> pd.DataFrame:
    """One row per model x task x chain x variant: runs, reached, valid start, the IQM cost and
    seconds to target over the seeds that reached it (without and with the warm-up), and the
    paired ratio to full backpropagation with its interval in both units."""
    rows = []
    for key, group in per_run.groupby(KEYS):
        base = group[group["variant"] == full]
        for variant, runs in group.groupby("variant"):
            reached = runs[runs["reached"]]
            row = {
                **dict(zip(KEYS, key)),
                "variant": variant,
                "ran_chain": runs["ran_chain"].iloc[0],
                **_chain_columns(runs),
                "runs": len(runs),
                "reached": int(runs["reached"].sum()),
                "valid_start": bool(runs["valid_start"].all()),
                "start_deviation": float(runs["start_deviation"].max()),
                "target_gain": float(runs["target_gain"].mean()),
                "start_reward": float(runs["start_reward"].mean()),
                "final_reward": float(runs["final_reward"].mean()),
                "resolution": _resolution(runs),
                "cost_to_target": float(iqm(reached["cost"].to_numpy())) if len(reached) else math.nan,
                "cost_to_target_with_warmup": (
                    float(iqm((reached["cost"] + reached["warmup_cost"]).to_numpy())) if len(reached) else math.nan
                ),
                "seconds_to_target": float(iqm(reached["seconds"].to_numpy())) if len(reached) else math.nan,
                "warmup_cost": float(runs["warmup_cost"].mean()),
                "warmup_seconds": float(runs["warmup_seconds"].mean()),
                "iters_to_target": float(reached["iters"].median()) if len(reached) else math.nan,
            }
            for unit in ("cost", "seconds"):
                estimate, lower, upper, counts = paired_ratio(runs, base, unit, options)
                row.update(
                    {f"{unit}_vs_{full}": estimate, f"{unit}_vs_{full}_low": lower, f"{unit}_vs_{full}_high": upper}
                )
            row.update(counts)
            rows.append(row)
    return pd.DataFrame(rows)


def verdicts(
    per_run: pd.DataFrame,
    guard: pd.DataFrame,
    options: Options,
    subject: str = "shortcut",
    full: str = "full",
    claim: float = 0.1,
    peers: list[str] | None = None,
) -> pd.DataFrame:
    """One row per model x task x chain x peer (full, then each other variant) and claim: the
    `subject` variant's paired IQM cost ratio to the peer with its interval, in the load-free
    unit (`cost`) and in seconds, and the verdict on `ratio <= threshold` for the paper's
    `claim` and for "cheaper at all" (threshold 1). Each row names the chain the subject ran and
    the chain the peer ran: a partial chain's subject is compared with full on the same steps
    (warm-ups left out: both paid the same one) and with the whole-chain baseline (the
    subject's warm-up counted: the whole chain pays none). `guard` (KEYS, variant,
    reward_hacked, guard columns) is joined beside each row. Peers with an invalid start get the
    verdict `invalid_start`; a subject that never ran gets none."""
    rows = []
    for key, group in per_run.groupby(KEYS):
        ours = group[group["variant"] == subject]
        if ours.empty:
            continue
        others = sorted(
            v for v in group["variant"].unique() if v not in (subject, full) and (peers is None or v in peers)
        )
        for peer in [full, *others]:
            theirs = group[group["variant"] == peer]
            if theirs.empty:
                continue
            warmup = bool(theirs["ran_chain"].iloc[0] != ours["ran_chain"].iloc[0])
            valid = bool(theirs["valid_start"].all() and ours["valid_start"].all())
            found = {unit: paired_ratio(ours, theirs, unit, options, warmup) for unit in ("cost", "seconds")}
            estimate, lower, upper, counts = found["cost"]
            s_estimate, s_lower, s_upper, _ = found["seconds"]
            for threshold in dict.fromkeys([claim, 1.0]):
                rows.append(
                    {
                        **dict(zip(KEYS, key)),
                        **_chain_columns(ours),
                        "subject": subject,
                        "peer": peer,
                        "subject_chain": ours["ran_chain"].iloc[0],
                        "peer_chain": theirs["ran_chain"].iloc[0],
                        "warmup_counted": warmup,
                        "claim": f"{subject} <= {threshold:g} x {peer}",
                        "threshold": threshold,
                        "unit": "cost",
                        "ratio": estimate,
                        "ratio_low": lower,
                        "ratio_high": upper,
                        "verdict": verdict(lower, upper, threshold, counts["paired"]) if valid else "invalid_start",
                        "seconds_ratio": s_estimate,
                        "seconds_ratio_low": s_lower,
                        "seconds_ratio_high": s_upper,
                        "seconds_verdict": verdict(s_lower, s_upper, threshold, counts["paired"])
                        if valid
                        else "invalid_start",
                        "scale": "headline"
                        if counts["paired"] >= HEADLINE_SEEDS
                        else f"smoke-scale ({counts['paired']} seeds)",
                        "subject_reached": f"{int(ours['reached'].sum())}/{len(ours)}",
                        "peer_reached": f"{int(theirs['reached'].sum())}/{len(theirs)}",
                        **counts,
                        "resolution": _resolution(ours),
                    }
                )
    table = pd.DataFrame(rows)
    if len(table) and len(guard):
        table = table.merge(guard.rename(columns={"variant": "subject"}), on=[*KEYS, "subject"], how="left")
    return table


def quality_guard(
    summary: pd.DataFrame,
    per_run: pd.DataFrame,
    metric: str,
    lower_is_better: bool,
    full: str = "full",
    level: float = 0.95,
) -> pd.DataFrame:
    """Per model x task x chain x variant: the mean over seeds of the final `metric` (distance
    to real data, FID), full's Student-t interval of it, and `reward_hacked`: the variant
    reached the target on most seeds while its metric is worse than full's interval allows."""
    from scipy import stats

    column = f"final_{metric}"
    if column not in summary:
        return pd.DataFrame(columns=[*KEYS, "variant", "reward_hacked"])
    done = summary[summary["status"] == "ok"]
    rows = []
    for key, group in done.groupby(KEYS):
        base = group.loc[group["variant"] == full, column].dropna()
        if len(base) < 2:
            continue
        half = float(stats.t.ppf((1 + level) / 2, len(base) - 1) * base.std(ddof=1) / math.sqrt(len(base)))
        limit = base.mean() + half if lower_is_better else base.mean() - half
        for variant, runs in group.groupby("variant"):
            value = float(runs[column].mean())
            mask = _same(per_run, key) & (per_run["variant"] == variant)
            reached = per_run.loc[mask, "reached"]
            worse = value > limit if lower_is_better else value < limit
            rows.append(
                {
                    **dict(zip(KEYS, key)),
                    "variant": variant,
                    "guard_metric": metric,
                    "guard_value": value,
                    "guard_full_low": float(base.mean() - half),
                    "guard_full_high": float(base.mean() + half),
                    "reward_hacked": bool(worse and len(reached) and reached.mean() > 0.5),
                }
            )
    return pd.DataFrame(rows)

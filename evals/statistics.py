"""Cost to quality, compared per seed, with runs that never get there censored, and verdicts.

The rules, following time-to-train benchmarks (MLPerf Training) and rliable:

- **Target, per seed.** On each seed full backpropagation's gain is its held-out reward's rise
  (final - start) on that seed's held-out noise. A run of any method on that seed reaches the
  target at the first held-out evaluation whose reward is at least min(its own start, full's
  start) + `target_fraction` x that gain: full always reaches its own target, a sampler that
  starts lower must gain as much from its own start, one that starts higher must reach full's
  target (a bounded reward may leave no room for full's whole gain above a better start). A
  seed on which full gained nothing sets no target; its runs are counted (`no_target`) and
  left out of the pairs for every method alike.
- **Resolution.** Where every iteration is evaluated, the cost to target is the cost through
  the first iteration at the target. Where evaluations are every N iterations, the crossing
  iteration is interpolated linearly in reward between the two evaluations around it and
  rounded up to a whole iteration, and the cost is the run's cumulative cost through that
  iteration (`resolution` says which).
- **Cost.** Two units: `cost`, network evaluations weighted by the measured cost of a backward
  pass against a forward one on the same device (nfe_forward + w nfe_backward, in forward
  passes: machine load cannot move it), and `seconds` (training seconds, as measured). The
  weight w is itself a measurement: the cost's interval is the union of the intervals with w
  at both ends of its 95% interval (`cost_w_low`, `cost_w_high`) and at its median, so the
  verdict allows for the weight's own noise.
- **Censoring.** A run that never reaches the target is censored: its cost is at least its
  whole budget. It is never dropped.
- **Paired ratios.** Methods are compared seed by seed (the same seed, the same held-out
  noise): r_s = cost_method(s) / cost_reference(s). With the method censored r_s lies in
  [budget / cost_ref, inf); with the reference censored in (0, cost / budget_ref]; with both,
  anywhere. The aggregate is the interquartile mean of log r_s (IQM, rliable's choice for few
  runs; 25% trimmed from each end), reported as a ratio, exp(IQM).
- **Interval.** A paired bootstrap over seeds (the same resampled seeds for both methods),
  seeded, so a rerun on the same records gives the same interval. Censored ratios enter at the
  end of their range that makes the statistic smallest for the lower limit, and largest for the
  upper limit (a censored method may be arbitrarily slow), so the interval holds whatever the
  censored runs would have cost.
- **Verdict** on a claim "ratio <= threshold": `holds` when the whole interval lies at or
  below it, `refuted` when the whole interval lies above it, else `inconclusive` (also with
  fewer than `MIN_SEEDS` paired seeds); with fewer than `HEADLINE_SEEDS` the row says it is
  smoke-scale. A baseline whose own sampler does not start where the base sampler does
  (`invalid_start`) gets no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

KEYS = ["model", "task", "wrt", "steps"]
COST_UNITS = ("cost", "cost_w_low", "cost_w_high")  # w at its median, and at its interval's ends
MIN_SEEDS = 3
HEADLINE_SEEDS = 8  # fewer paired seeds make a verdict smoke-scale


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


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean of the middle half (25% trimmed each end;
    fewer than four values: their mean). Infinities sort to the ends."""
    values = np.sort(values, axis=axis)
    n = values.shape[axis]
    cut = int(math.floor(0.25 * n))
    middle = np.take(values, range(cut, n - cut), axis=axis)
    with np.errstate(invalid="ignore"):
        return middle.mean(axis=axis)


def _crossing(run: pd.DataFrame, iterations: pd.DataFrame, target: float,
              units: tuple[str, ...]) -> tuple[bool, dict[str, float], float | None, str]:
    """(reached, spent, iteration, resolution) of one run: `spent` maps each unit to its
    cumulative sum through the iteration where the run reaches `target`, or through its last
    iteration when it never does."""
    run = run.sort_values("iter")
    done = iterations.sort_values("iter")
    totals = {unit: done[unit].cumsum().to_numpy() for unit in units}
    gaps = np.diff(run["iter"].to_numpy())
    resolution = "each iteration" if len(gaps) == 0 or gaps.max() <= 1 else f"interpolated between evaluations every {int(gaps.max())}"
    at = run["reward"].to_numpy() >= target
    if not at.any() or not len(done):
        return False, {unit: float(total[-1]) if len(total) else 0.0 for unit, total in totals.items()}, None, resolution
    first = int(np.argmax(at))
    if first == 0:
        return True, dict.fromkeys(units, 0.0), 0, resolution
    before, after = run.iloc[first - 1], run.iloc[first]
    rise = after["reward"] - before["reward"]
    fraction = 1.0 if rise <= 0 else (target - before["reward"]) / rise
    iteration = int(math.ceil(before["iter"] + fraction * (after["iter"] - before["iter"]) - 1e-9))
    iteration = max(int(before["iter"]) + 1, min(iteration, int(after["iter"])))
    return True, {unit: float(total[iteration - 1]) for unit, total in totals.items()}, iteration, resolution


def runs_to_target(evaluations: pd.DataFrame, iterations: pd.DataFrame, runs: pd.DataFrame, options: Options,
                   reference: str = "full") -> pd.DataFrame:
    """One row per run: its target, whether and at what cost (both units) it reached it, its
    whole budget, its start and final reward, its start deviation, and whether its start is
    valid. `evaluations` has a row per run x held-out evaluation (KEYS, variant, seed, iter,
    reward); `iterations` a row per run x iteration with its `cost` and `seconds`; `runs` a row
    per run with `status` and `start_deviation`."""
    rows = []
    units = (*[unit for unit in COST_UNITS if unit in iterations], "seconds")
    ok = runs[runs["status"] == "ok"]
    for key, group in evaluations.merge(ok[[*KEYS, "variant", "seed"]], on=[*KEYS, "variant", "seed"]).groupby(KEYS):
        base = group[group["variant"] == reference]
        if base.empty:
            continue
        ends = base.sort_values("iter").groupby("seed")["reward"].agg(["first", "last"])
        gains = ends["last"] - ends["first"]
        for (variant, seed), run in group.groupby(["variant", "seed"]):
            run = run.sort_values("iter")
            start = float(run["reward"].iloc[0])
            gain = float(gains.get(seed, math.nan))
            target = min(start, float(ends["first"].get(seed, math.nan))) + options.target_fraction * gain
            spent = iterations[(iterations[KEYS] == pd.Series(dict(zip(KEYS, key)))).all(axis=1)
                               & (iterations["variant"] == variant) & (iterations["seed"] == seed)]
            if gain > 0:
                reached, costs, iteration, resolution = _crossing(run, spent, target, units)
            else:  # full did not run, or gained nothing, on this seed
                reached, costs, iteration, resolution = False, dict.fromkeys(units, math.nan), None, "no target"
            info = ok[(ok[KEYS] == pd.Series(dict(zip(KEYS, key)))).all(axis=1) & (ok["variant"] == variant)
                      & (ok["seed"] == seed)].iloc[0]
            deviation = float(info.get("start_deviation", 0.0) or 0.0)
            rows.append({
                **dict(zip(KEYS, key)), "variant": variant, "seed": seed, "target_gain": gain, "has_target": gain > 0, "target": target,
                "start_reward": start, "final_reward": float(run["reward"].iloc[-1]), "reached": reached,
                **costs, "iters": iteration, **{f"budget_{unit}": float(spent[unit].sum()) for unit in units},
                "resolution": resolution,
                "start_deviation": deviation, "valid_start": deviation <= options.start_tolerance,
            })
    return pd.DataFrame(rows)


def _resolution(runs: pd.DataFrame) -> str:
    """How the crossings of these runs were found (see `_crossing`); "no target" without one."""
    targeted = runs.loc[runs["has_target"].astype(bool), "resolution"]
    return str(targeted.iloc[0]) if len(targeted) else "no target"


def paired_bounds(method: pd.DataFrame, reference: pd.DataFrame, unit: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per paired seed with a target, the lowest and highest the log cost ratio method /
    reference can be, in `unit` (cost or seconds), and the counts of each kind of pair."""
    pairs = method.merge(reference, on="seed", suffixes=("", "_ref"))
    targeted = pairs[pairs["has_target"].astype(bool)]
    low, high = [], []
    counts = {"paired": len(targeted), "no_target": len(pairs) - len(targeted), "censored_method": 0,
              "censored_reference": 0, "censored_both": 0}
    pairs = targeted
    budget = f"budget_{unit}"
    for row in pairs.itertuples():
        ours, theirs = getattr(row, unit), getattr(row, f"{unit}_ref")
        if row.reached and row.reached_ref:
            ratio = math.log(max(ours, 1e-12) / max(theirs, 1e-12))
            low.append(ratio), high.append(ratio)
        elif row.reached_ref:
            counts["censored_method"] += 1
            low.append(math.log(max(getattr(row, budget), 1e-12) / max(theirs, 1e-12))), high.append(math.inf)
        elif row.reached:
            counts["censored_reference"] += 1
            low.append(-math.inf), high.append(math.log(max(ours, 1e-12) / max(getattr(row, f"{budget}_ref"), 1e-12)))
        else:
            counts["censored_both"] += 1
            low.append(-math.inf), high.append(math.inf)
    return np.array(low), np.array(high), counts


def ratio_interval(low: np.ndarray, high: np.ndarray, options: Options) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the IQM cost ratio: the estimate from the pairs with a known
    ratio or a finite bound, the limits from a seeded paired bootstrap over seeds."""
    if len(low) == 0:
        return math.nan, math.nan, math.nan
    point = np.where(np.isfinite(low), low, high)
    point = point[np.isfinite(point)]
    estimate = math.exp(float(iqm(point))) if len(point) else math.nan
    rng = np.random.default_rng(options.seed)
    index = rng.integers(0, len(low), size=(options.resamples, len(low)))
    alpha = 1 - options.confidence
    lows, highs = iqm(low[index], axis=1), iqm(high[index], axis=1)
    lower = float(np.quantile(lows, alpha / 2, method="lower"))
    upper = float(np.quantile(highs, 1 - alpha / 2, method="higher"))
    return estimate, math.exp(lower), math.exp(upper)


def paired_ratio(method: pd.DataFrame, reference: pd.DataFrame, unit: str, options: Options) -> tuple[float, float, float, dict]:
    """(estimate, lower, upper, counts) of the paired IQM ratio method / reference in `unit`
    (`cost` or `seconds`). For `cost` the estimate is at the measured weight w and the interval
    is the union of the intervals at w and at both ends of w's interval, where runs carry them."""
    units = [u for u in COST_UNITS if u in method and u in reference] if unit == "cost" else [unit]
    intervals, counts = [], None
    for name in units:
        low, high, found = paired_bounds(method, reference, name)
        intervals.append(ratio_interval(low, high, options))
        counts = counts or found
    estimates, lowers, uppers = zip(*intervals)
    lower = math.nan if any(map(math.isnan, lowers)) else min(lowers)
    upper = math.nan if any(map(math.isnan, uppers)) else max(uppers)
    return estimates[0], lower, upper, counts


def verdict(lower: float, upper: float, threshold: float, seeds: int) -> str:
    """`holds`, `refuted` or `inconclusive` for the claim ratio <= threshold."""
    if seeds < MIN_SEEDS or math.isnan(lower) or math.isnan(upper):
        return "inconclusive"
    edge = threshold * (1 + 1e-9)  # round-off of exp(log(ratio)) is not evidence either way
    if upper <= edge:
        return "holds"
    if lower > edge:
        return "refuted"
    return "inconclusive"


def cost_to_quality(per_run: pd.DataFrame, options: Options, reference: str = "full") -> pd.DataFrame:
    """One row per model x task x T x variant: runs, reached, valid start, the IQM cost and
    seconds to target over the seeds that reached it, and the paired ratio to the reference
    with its interval in both units."""
    rows = []
    for key, group in per_run.groupby(KEYS):
        base = group[group["variant"] == reference]
        for variant, runs in group.groupby("variant"):
            reached = runs[runs["reached"]]
            row = {
                **dict(zip(KEYS, key)), "variant": variant, "runs": len(runs), "reached": int(runs["reached"].sum()),
                "valid_start": bool(runs["valid_start"].all()), "start_deviation": float(runs["start_deviation"].max()),
                "target_gain": float(runs["target_gain"].mean()), "start_reward": float(runs["start_reward"].mean()),
                "final_reward": float(runs["final_reward"].mean()), "resolution": _resolution(runs),
                "cost_to_target": float(iqm(reached["cost"].to_numpy())) if len(reached) else math.nan,
                "seconds_to_target": float(iqm(reached["seconds"].to_numpy())) if len(reached) else math.nan,
                "iters_to_target": float(reached["iters"].median()) if len(reached) else math.nan,
            }
            for unit in ("cost", "seconds"):
                estimate, lower, upper, counts = paired_ratio(runs, base, unit, options)
                row.update({f"{unit}_vs_{reference}": estimate, f"{unit}_vs_{reference}_low": lower,
                            f"{unit}_vs_{reference}_high": upper})
            row.update(counts)
            rows.append(row)
    return pd.DataFrame(rows)


def verdicts(per_run: pd.DataFrame, guard: pd.DataFrame, options: Options, subject: str = "shortcut",
             reference: str = "full", claim: float = 0.1, peers: list[str] | None = None) -> pd.DataFrame:
    """One row per model x task x T x baseline (the reference, then each peer) and claim: the
    `subject` variant's paired IQM cost ratio to the baseline with its interval, in the load-free
    unit (`cost`) and in seconds, and the verdict on `ratio <= threshold` for the paper's
    `claim` and for "cheaper at all" (threshold 1). `guard` (KEYS, variant, reward_hacked,
    guard columns) is joined beside each row. Baselines with an invalid start get the verdict
    `invalid_start`; a subject that never ran gets none."""
    rows = []
    for key, group in per_run.groupby(KEYS):
        ours = group[group["variant"] == subject]
        if ours.empty:
            continue
        baselines = [reference] + sorted(v for v in group["variant"].unique() if v not in (subject, reference)
                                         and (peers is None or v in peers))
        for baseline in baselines:
            theirs = group[group["variant"] == baseline]
            if theirs.empty:
                continue
            valid = bool(theirs["valid_start"].all() and ours["valid_start"].all())
            found = {}
            for unit in ("cost", "seconds"):
                found[unit] = paired_ratio(ours, theirs, unit, options)
            for threshold in dict.fromkeys([claim, 1.0]):
                estimate, lower, upper, counts = found["cost"]
                s_estimate, s_lower, s_upper, _ = found["seconds"]
                rows.append({
                    **dict(zip(KEYS, key)), "subject": subject, "baseline": baseline,
                    "claim": f"{subject} <= {threshold:g} x {baseline}", "threshold": threshold, "unit": "cost",
                    "ratio": estimate, "ratio_low": lower, "ratio_high": upper,
                    "verdict": verdict(lower, upper, threshold, counts["paired"]) if valid else "invalid_start",
                    "seconds_ratio": s_estimate, "seconds_ratio_low": s_lower, "seconds_ratio_high": s_upper,
                    "seconds_verdict": verdict(s_lower, s_upper, threshold, counts["paired"]) if valid else "invalid_start",
                    "scale": "headline" if counts["paired"] >= HEADLINE_SEEDS else f"smoke-scale ({counts['paired']} seeds)",
                    "subject_reached": f"{int(ours['reached'].sum())}/{len(ours)}",
                    "baseline_reached": f"{int(theirs['reached'].sum())}/{len(theirs)}",
                    **counts, "resolution": _resolution(ours),
                })
    table = pd.DataFrame(rows)
    if len(table) and len(guard):
        table = table.merge(guard.rename(columns={"variant": "subject"}), on=[*KEYS, "subject"], how="left")
    return table


def quality_guard(summary: pd.DataFrame, per_run: pd.DataFrame, metric: str, lower_is_better: bool,
                  reference: str = "full", level: float = 0.95) -> pd.DataFrame:
    """Per model x task x T x variant: the mean over seeds of the final `metric` (distance to
    real data, FID), full's Student-t interval of it, and `reward_hacked`: the variant reached
    the target on most seeds while its metric is worse than full's interval allows."""
    from scipy import stats

    column = f"final_{metric}"
    if column not in summary:
        return pd.DataFrame(columns=[*KEYS, "variant", "reward_hacked"])
    done = summary[summary["status"] == "ok"]
    rows = []
    for key, group in done.groupby(KEYS):
        base = group.loc[group["variant"] == reference, column].dropna()
        if len(base) < 2:
            continue
        half = float(stats.t.ppf((1 + level) / 2, len(base) - 1) * base.std(ddof=1) / math.sqrt(len(base)))
        limit = base.mean() + half if lower_is_better else base.mean() - half
        for variant, runs in group.groupby("variant"):
            value = float(runs[column].mean())
            mask = (per_run[KEYS] == pd.Series(dict(zip(KEYS, key)))).all(axis=1) & (per_run["variant"] == variant)
            reached = per_run.loc[mask, "reached"]
            worse = value > limit if lower_is_better else value < limit
            rows.append({**dict(zip(KEYS, key)), "variant": variant, "guard_metric": metric, "guard_value": value,
                         "guard_full_low": float(base.mean() - half), "guard_full_high": float(base.mean() + half),
                         "reward_hacked": bool(worse and len(reached) and reached.mean() > 0.5)})
    return pd.DataFrame(rows)

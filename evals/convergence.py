"""Cost at equal quality: how many seconds, network evaluations and iterations each method
needs to reach a stated fraction of the improvement full backpropagation achieves.

Rule: for a task and T, full's gain is the mean over seeds of (final - start) of its
held-out evaluation reward. A run reaches the target at its first evaluation whose reward is at
least min(its own start, full's start on the same seed) + `fraction` x that gain. A sampler
that starts lower (DOODL's EDICT at small T) must gain as much as full from its own start; one
that starts higher must reach full's target, the same quality, since a bounded reward may not
leave room for full's whole gain above a better start. Seconds and evaluations are the
training cost up to then (evaluations themselves are not counted). Runs that never get there
are counted as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from evals.tables import t_half_width
from sdo.tasks import TASK_WRT

GROUP = ["task", "wrt", "steps", "variant"]


def evaluations_table(paths: list[Path | str]) -> pd.DataFrame:
    """One row per run x held-out evaluation (runs whose status is not ok are left out)."""
    rows = []
    for path in map(Path, paths):
        record = json.loads(path.read_text())
        if record["status"] != "ok":
            continue
        config = record["config"]
        run = {"task": config["task"], "wrt": TASK_WRT[config["task"]], "steps": config["steps"],
               "variant": record["variant"], "seed": config["seed"], "device": record["device"]}
        rows += [{**run, **row} for row in record.get("evaluations", [])]
    return pd.DataFrame(rows)


def _first_reach(run: pd.DataFrame, gain: float, fraction: float, reference_start: float) -> pd.Series:
    run = run.sort_values("iter")
    start = run["reward"].iloc[0]
    reached = run[run["reward"] >= min(start, reference_start) + fraction * gain]
    first = reached.iloc[0] if len(reached) else None
    return pd.Series({
        "start_reward": start,
        "final_reward": run["reward"].iloc[-1],
        "reached": first is not None,
        "seconds": first["seconds"] if first is not None else np.nan,
        "nfe": first["nfe"] if first is not None else np.nan,
        "iters": first["iter"] if first is not None else np.nan,
    })


def cost_to_quality(evaluations: pd.DataFrame, fraction: float = 0.9, reference: str = "full") -> pd.DataFrame:
    """One row per task x T x variant: runs, runs that reached the target, mean seconds,
    network evaluations and iterations to reach it with Student-t 95% half-widths over the
    seeds that reached it, and the ratio of mean seconds and evaluations to every other
    variant's (`seconds_vs_full` = 0.1 is "90% less time than full")."""
    if evaluations.empty:
        return pd.DataFrame(columns=GROUP)
    per_run = []
    for (task, steps), group in evaluations.groupby(["task", "steps"]):
        base = group[group["variant"] == reference]
        if base.empty:
            continue
        ends = base.sort_values("iter").groupby("seed")["reward"].agg(["first", "last"])
        gain = float((ends["last"] - ends["first"]).mean())
        for (wrt, variant, seed), run in group.groupby(["wrt", "variant", "seed"]):
            reference_start = ends["first"].get(seed, ends["first"].mean())
            row = _first_reach(run, gain, fraction, reference_start) if gain > 0 else pd.Series({"reached": False})
            per_run.append({"task": task, "wrt": wrt, "steps": steps, "variant": variant, "seed": seed,
                            "target_gain": gain, **row.to_dict()})
    runs = pd.DataFrame(per_run)
    table = runs.groupby(GROUP).agg(
        runs=("seed", "size"),
        reached=("reached", "sum"),
        target_gain=("target_gain", "first"),
        start_reward=("start_reward", "mean"),
        final_reward=("final_reward", "mean"),
        final_reward_ci95=("final_reward", t_half_width),
        seconds_to_target=("seconds", "mean"),
        seconds_ci95=("seconds", t_half_width),
        nfe_to_target=("nfe", "mean"),
        nfe_ci95=("nfe", t_half_width),
        iters_to_target=("iters", "mean"),
    ).reset_index()
    table.insert(GROUP.index("variant") + 1, "target_fraction", fraction)
    for (task, steps), group in table.groupby(["task", "steps"]):
        for other in group.itertuples():
            for cost in ("seconds", "nfe"):
                column = f"{cost}_vs_{other.variant}"
                table.loc[group.index, column] = group[f"{cost}_to_target"] / getattr(other, f"{cost}_to_target")
    return table

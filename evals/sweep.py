"""A sweep's records turned into its tables: what `snakemake` writes to results/tables, as one
function a notebook can call too. Whatever the runs' statuses, every table comes out."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evals import statistics
from evals.guide import guidance_table
from evals.tables import audits_table, evaluations_table, methods_table, pooled_quality, read_records, runs_table, status_counts

log = logging.getLogger(__name__)
NOMINAL_BACKWARD = 2.0  # a backward pass in forward passes, where no measurement finished


def backward_weights(paths: list[Path | str]) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(model, task) -> the measured backward / forward cost and its 95% interval (w, low,
    high), from `sdo backward-cost` records named results/backward_cost/<model slug>/<task>.json."""
    weights = {}
    for path in map(Path, paths):
        record = json.loads(path.read_text())
        if record["status"] == "ok":
            w = float(record["backward_vs_forward"])
            weights[record["config"]["model"], path.stem] = (
                w, float(record.get("backward_vs_forward_low", w)), float(record.get("backward_vs_forward_high", w)))
    return weights


def with_cost(iterations: pd.DataFrame, weights: dict[tuple[str, str], tuple[float, float, float]]) -> pd.DataFrame:
    """The iterations (or evaluations, whose counts are cumulative) with `backward_weight` and
    `cost` = nfe_forward + w nfe_backward, in forward passes, and the same cost at both ends of
    w's interval (`cost_w_low`, `cost_w_high`), which the verdicts' intervals cover."""
    frame = iterations.copy()
    if frame.empty or "nfe_forward" not in frame:
        return frame.assign(**{column: pd.Series(dtype=float) for column in ("backward_weight", *statistics.COST_UNITS)})
    nominal = (NOMINAL_BACKWARD,) * 3
    found = np.array([weights.get((m, t), nominal) for m, t in zip(frame["model"], frame["task"])], dtype=float).reshape(-1, 3)
    frame["backward_weight"] = found[:, 0]
    for column, w in zip(statistics.COST_UNITS, found.T):
        frame[column] = frame["nfe_forward"] + w * frame["nfe_backward"]
    return frame


def guard_table(summary: pd.DataFrame, per_run: pd.DataFrame, reference: str, chosen: dict | None = None) -> pd.DataFrame:
    """The quality guard per model: the `chosen` final metric ({metric, lower_is_better}: a
    user's `metric:<module:function>`), else its domain's (distance to real digits, or Inception
    FID), compared with the reference's interval."""
    from evals.domains import DOMAINS
    from sdo.models import resolve

    frames = []
    for model, runs in summary.groupby("model"):
        guard = (chosen["metric"], chosen.get("lower_is_better", True)) if chosen else DOMAINS[resolve(str(model)).cls.domain].guard
        if guard is not None and len(per_run):
            frames.append(statistics.quality_guard(runs, per_run[per_run["model"] == model], *guard, reference=reference))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*statistics.KEYS, "variant", "reward_hacked"])


def invalid_baselines(summary: pd.DataFrame, per_run: pd.DataFrame, subject: str) -> pd.DataFrame:
    """A verdict row `invalid_start` for each baseline whose runs all stopped because its own
    sampler did not start where the base sampler does (it never optimised: no ratio)."""
    if summary.empty or "invalid_start" not in set(summary["status"]):
        return pd.DataFrame()
    rows = []
    for key, runs in summary.groupby([*statistics.KEYS, "variant"]):
        if (runs["status"] == "invalid_start").all() and key[-1] != subject:
            deviation = pd.to_numeric(runs["start_deviation"], errors="coerce").max()
            rows.append({**dict(zip(statistics.KEYS, key[:-1])), "subject": subject, "baseline": key[-1],
                         "claim": f"{subject} vs {key[-1]}", "verdict": "invalid_start", "start_deviation": deviation})
    return pd.DataFrame(rows)


def build_tables(records: list, guided: list, backward: list, settings: dict, weights_dir: str | Path | None = None) -> dict:
    """Every table of a sweep from its run records, guided records and backward-cost records,
    with the config's `statistics` block as `settings`."""
    options = statistics.Options(
        target_fraction=settings.get("target_fraction", 0.9), confidence=settings.get("confidence", 0.95),
        resamples=settings.get("resamples", 4000), seed=settings.get("seed", 0),
        start_tolerance=settings.get("start_tolerance", 0.2),
    )
    reference, subject = settings.get("reference", "full"), settings.get("subject", "shortcut")
    loaded = read_records(records)
    iterations, summary = runs_table(loaded)
    weights = backward_weights(backward)
    iterations = with_cost(iterations, weights)
    methods = methods_table(summary)
    if weights_dir is not None and len(summary):
        from sdo.models import store
        from sdo.models.data import load_split

        pooled = pooled_quality(summary, store.load("classifier", weights_dir), load_split("held_out")[0])
        if len(pooled):
            methods = methods.merge(pooled, on=["model", "task", "wrt", "variant", "steps"], how="left")
    evaluations = with_cost(evaluations_table(loaded), weights)
    finished = evaluations[evaluations["status"] == "ok"] if len(evaluations) else evaluations
    per_run = statistics.runs_to_target(finished, iterations, summary, options, reference) if len(finished) else pd.DataFrame()
    cost = statistics.cost_to_quality(per_run, options, reference) if len(per_run) else pd.DataFrame(columns=statistics.KEYS)
    guard = guard_table(summary, per_run, reference, settings.get("guard")) if len(summary) else pd.DataFrame()
    verdicts = (statistics.verdicts(per_run, guard, options, subject, reference, settings.get("claim", 0.1))
                if len(per_run) else pd.DataFrame(columns=[*statistics.KEYS, "claim", "verdict"]))
    verdicts = pd.concat([verdicts, invalid_baselines(summary, per_run, subject)], ignore_index=True)
    if len(verdicts):
        found = [weights.get((m, t), (math.nan,) * 3) for m, t in zip(verdicts["model"], verdicts["task"])]
        for index, column in enumerate(("backward_weight", "backward_weight_low", "backward_weight_high")):
            verdicts[column] = [w[index] for w in found]
        verdicts["runs_per_status"] = json.dumps(status_counts(summary))
    counts = status_counts(summary)
    log.info("runs by status: %s", ", ".join(f"{status} {n}" for status, n in counts.items()))
    return {
        "verdicts": verdicts, "cost": cost, "iterations": iterations, "summary": summary, "methods": methods,
        "evaluations": evaluations, "audits": audits_table(loaded), "per_run": per_run,
        "guidance": guidance_table(guided, evaluations), "status_counts": counts,
    }


def verdicts_rst(path: Path | str) -> str:
    """The verdicts table as an RST table for the report's first page (the subject against each
    baseline on the paper's claim), or a sentence saying there are none yet."""
    from tabulate import tabulate

    path = Path(path)
    if not path.exists():
        return "(no verdicts yet: run the sweep first)"
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty or "verdict" not in table:
        return "(no verdicts: no run finished; see the tables' status counts)"
    shown = table[(table["threshold"] == table["threshold"].min()) | (table["verdict"] == "invalid_start")]

    def number(value) -> str:
        return "" if pd.isna(value) else f"{value:.3g}"

    rows = [
        [r.model, r.task, r.steps, r.claim, number(r.ratio), f"[{number(r.ratio_low)}, {number(r.ratio_high)}]"
         if not pd.isna(r.ratio_low) else "", r.verdict, number(r.seconds_ratio), getattr(r, "subject_reached", ""),
         getattr(r, "baseline_reached", ""), "yes" if getattr(r, "reward_hacked", False) is True else "no",
         getattr(r, "scale", "")]
        for r in shown.fillna({"subject_reached": "", "baseline_reached": "", "scale": ""}).itertuples()
    ]
    headers = ["model", "task", "T", "claim", "cost ratio", "95% interval", "verdict", "seconds ratio", "subject reached",
               "baseline reached", "reward hacked", "scale"]
    return tabulate(rows, headers=headers, tablefmt="grid")

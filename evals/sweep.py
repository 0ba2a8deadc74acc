"""A sweep's records turned into its tables: what `snakemake` writes to results/tables, as one
function a notebook can call too. Whatever the runs' statuses, every table comes out.

The cost unit, an iteration's load-free cost in forward passes of the denoiser weighted as
measured on the same device, and what it leaves out: docs/methodology.md, "The cost unit".
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evals import analysis
from evals.tables import (
    audits_table,
    evaluations_table,
    guidance_table,
    methods_table,
    pooled_quality,
    read_records,
    runs_table,
    status_counts,
)

log = logging.getLogger(__name__)
NOMINAL = {"w": 2.0, "low": 2.0, "high": 2.0, "graph": 1.0, "loss": 0.0}  # where no measurement finished


def backward_weights(paths: list[Path | str]) -> dict[tuple[str, str], dict]:
    """(model, task) -> the measured costs against a forward pass: the backward's (w, its 95%
    interval low and high), a forward with a graph's (graph) and the loss's (loss), from
    `sdo backward-cost` records named results/backward_cost/<model slug>/<task>.json."""
    weights = {}
    for path in map(Path, paths):
        record = json.loads(path.read_text())
        if record["status"] == "ok":
            w = float(record["backward_vs_forward"])
            weights[record["config"]["model"], path.stem] = {
                "w": w,
                "low": float(record.get("backward_vs_forward_low", w)),
                "high": float(record.get("backward_vs_forward_high", w)),
                "graph": float(record.get("graph_vs_forward", 1.0)),
                "loss": float(record.get("loss_vs_forward", 0.0)),
            }
    return weights


def with_cost(iterations: pd.DataFrame, weights: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """The iterations (or evaluations, whose counts are cumulative) with `backward_weight` and
    `cost` in forward passes, and the same cost at both ends of the backward weight's interval
    (`cost_w_low`, `cost_w_high`)."""
    frame = iterations.copy()
    if frame.empty or "nfe_forward" not in frame:
        return frame.assign(**{column: pd.Series(dtype=float) for column in ("backward_weight", *analysis.COST_UNITS)})
    found = [weights.get((m, t), NOMINAL) for m, t in zip(frame["model"], frame["task"])]
    column = {key: np.array([f[key] for f in found], dtype=float) for key in NOMINAL}
    graph = frame["nfe_graph"].fillna(0) if "nfe_graph" in frame else 0
    losses = frame["losses"].fillna(0) if "losses" in frame else 0
    fixed = frame["nfe_forward"] + (column["graph"] - 1) * graph + column["loss"] * losses
    frame["backward_weight"] = column["w"]
    for name, w in zip(analysis.COST_UNITS, (column["w"], column["low"], column["high"])):
        frame[name] = fixed + w * frame["nfe_backward"]
    return frame


def guard_table(summary: pd.DataFrame, per_run: pd.DataFrame, full: str, chosen: dict | None = None) -> pd.DataFrame:
    """The quality guard per model: the `chosen` final metric ({metric, lower_is_better}: a
    user's `metric:<module:function>`), else its domain's (distance to real digits, or Inception
    FID), compared with full backpropagation's interval."""
    from evals.domains import DOMAINS
    from sdo.models import resolve

    frames = []
    for model, runs in summary.groupby("model"):
        guard = (
            (chosen["metric"], chosen.get("lower_is_better", True))
            if chosen
            else DOMAINS[resolve(str(model)).cls.domain].guard
        )
        if guard is not None and len(per_run):
            frames.append(analysis.quality_guard(runs, per_run[per_run["model"] == model], *guard, full=full))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[*analysis.KEYS, "variant", "reward_hacked"])
    )


def invalid_peers(summary: pd.DataFrame, subject: str) -> pd.DataFrame:
    """A verdict row `invalid_start` for each peer whose runs all stopped because its own
    sampler did not start where the base sampler does (it never optimised: no ratio)."""
    if summary.empty or "invalid_start" not in set(summary["status"]):
        return pd.DataFrame()
    rows = []
    for key, runs in summary.groupby([*analysis.KEYS, "variant"]):
        if (runs["status"] == "invalid_start").all() and key[-1] != subject:
            deviation = pd.to_numeric(runs["start_deviation"], errors="coerce").max()
            rows.append(
                {
                    **dict(zip(analysis.KEYS, key[:-1])),
                    "subject": subject,
                    "peer": key[-1],
                    "claim": f"{subject} vs {key[-1]}",
                    "verdict": "invalid_start",
                    "start_deviation": deviation,
                }
            )
    return pd.DataFrame(rows)


def build_tables(
    records: list, guided: list, backward: list, settings: dict, weights_dir: str | Path | None = None
) -> dict:
    """Every table of a sweep from its run records, guided records and backward-cost records,
    with the config's `statistics` block as `settings`."""
    options = analysis.Options(
        target_fraction=settings.get("target_fraction", 0.9),
        confidence=settings.get("confidence", 0.95),
        resamples=settings.get("resamples", 4000),
        seed=settings.get("seed", 0),
        start_tolerance=settings.get("start_tolerance", 0.2),
    )
    full, subject = settings.get("full", "full"), settings.get("subject", "shortcut")
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
            methods = methods.merge(pooled, on=["model", "task", "wrt", "variant", "chain"], how="left")
    evaluations = with_cost(evaluations_table(loaded), weights)
    finished = evaluations[evaluations["status"] == "ok"] if len(evaluations) else evaluations
    per_run = analysis.runs_to_target(finished, iterations, summary, options, full) if len(finished) else pd.DataFrame()
    cost = analysis.cost_to_quality(per_run, options, full) if len(per_run) else pd.DataFrame(columns=analysis.KEYS)
    guard = guard_table(summary, per_run, full, settings.get("guard")) if len(summary) else pd.DataFrame()
    verdicts = (
        analysis.verdicts(per_run, guard, options, subject, full, settings.get("claim", 0.1))
        if len(per_run)
        else pd.DataFrame(columns=[*analysis.KEYS, "claim", "verdict"])
    )
    verdicts = pd.concat([verdicts, invalid_peers(summary, subject)], ignore_index=True)
    if len(verdicts):
        found = [weights.get((m, t), {}) for m, t in zip(verdicts["model"], verdicts["task"])]
        for column, key in (
            ("backward_weight", "w"),
            ("backward_weight_low", "low"),
            ("backward_weight_high", "high"),
            ("graph_weight", "graph"),
            ("loss_weight", "loss"),
        ):
            verdicts[column] = [w.get(key, math.nan) for w in found]
        verdicts["runs_per_status"] = json.dumps(status_counts(summary))
    counts = status_counts(summary)
    log.info("runs by status: %s", ", ".join(f"{status} {n}" for status, n in counts.items()))
    return {
        "verdicts": verdicts,
        "cost": cost,
        "iterations": iterations,
        "summary": summary,
        "methods": methods,
        "evaluations": evaluations,
        "audits": audits_table(loaded),
        "per_run": per_run,
        "guidance": guidance_table(guided, evaluations),
        "status_counts": counts,
    }


def sweep_outcome(path: Path | str) -> tuple[str, bool] | None:
    """After a sweep: (one line counting the runs that did not end ok and pointing at the
    summary, whether none ended ok), or None when every run ended ok or there is no summary."""
    path = Path(path)
    try:
        summary = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None
    if summary.empty or "status" not in summary:
        return None
    counts = summary["status"].value_counts()
    ok = int(counts.get("ok", 0))
    if ok == len(summary):
        return None
    others = ", ".join(f"{n} {status}" for status, n in counts.items() if status != "ok")
    return f"{len(summary) - ok} of {len(summary)} runs did not end ok ({others}); see {path}", ok == 0

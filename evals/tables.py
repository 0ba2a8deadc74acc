"""Tidy tables from run records: one row per run x iteration, and one per run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

from evals.records import write_atomic
from sdo.tasks import TASK_WRT

RUN_KEYS = ("task", "variant", "method", "model", "steps", "seed", "batch", "target", "guidance", "eta")


def _run_columns(record: dict, path: Path) -> dict:
    config = record["config"]
    columns = {key: config.get(key) for key in RUN_KEYS}
    columns["wrt"] = TASK_WRT.get(config.get("task"))
    columns["options"] = json.dumps(config.get("options") or {}, sort_keys=True)
    columns.update(status=record["status"], reason=record.get("reason"), device=record["device"], record=str(path),
                   samples_file=record.get("samples_file"))
    return columns


def runs_table(paths: list[Path | str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(iterations, summary): per-iteration rows, and per-run rows with final metrics and the
    median seconds per iteration after the first (warm-up) iteration. Runs that did not finish
    keep a row with their status."""
    iteration_rows, summary_rows = [], []
    for path in map(Path, paths):
        record = json.loads(path.read_text())
        run = _run_columns(record, path)
        iterations = record.get("iterations") or []
        iteration_rows += [{**run, **row} for row in iterations] or [run]
        timed = [row["seconds"] for row in iterations[1:]] or [row["seconds"] for row in iterations]
        summary_rows.append(
            {
                **run,
                "iters": len(iterations),
                "seconds_per_iter": pd.Series(timed, dtype=float).median(),
                "saved_bytes": record.get("saved_bytes"),
                "nfe_forward": iterations[0]["nfe_forward"] if iterations else None,
                "nfe_backward": iterations[0]["nfe_backward"] if iterations else None,
                **{f"final_{k}": v for k, v in (record.get("final") or {}).items()},
                **{f"baseline_{k}": v for k, v in (record.get("baseline") or {}).items()},
            }
        )
    return pd.DataFrame(iteration_rows), pd.DataFrame(summary_rows)


def t_half_width(values: pd.Series, level: float = 0.95) -> float:
    """Half-width of the Student-t interval for the mean of `values` (NaN below two values)."""
    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5)


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, variant, T): the count of runs per status (`runs` counts the `ok` ones;
    diverged, failed and other runs are counted apart and excluded from the averages), median
    seconds per iteration, peak autograd bytes, and the final metrics averaged over the `ok`
    seeds, the reward with a Student-t 95% half-width across seeds (each seed's value is already
    a mean over its samples)."""
    keys = ["task", "wrt", "variant", "steps"]
    finished = summary[summary["status"] == "ok"]
    metrics = [c for c in finished.columns if c.startswith(("final_", "baseline_")) and pd.api.types.is_numeric_dtype(finished[c])]
    averages = finished.groupby(keys).agg(
        device=("device", lambda d: "; ".join(sorted(set(d)))),
        seconds_per_iter=("seconds_per_iter", "median"),
        saved_bytes=("saved_bytes", "max"),
        **{c: (c, "mean") for c in metrics},
    )
    averages["final_reward_ci95_seeds"] = finished.groupby(keys)["final_reward_mean"].agg(t_half_width)
    counts = summary.groupby(keys)["status"].value_counts().unstack(fill_value=0)
    counts = counts.rename(columns=lambda status: "runs" if status == "ok" else f"runs_{status}")
    if "runs" not in counts:
        counts.insert(0, "runs", 0)
    return counts.join(averages, how="left").reset_index()


def pooled_quality(summary: pd.DataFrame, classifier, reference) -> pd.DataFrame:
    """FID and KID of each (task, variant, T) of the embedded model over the final (and
    baseline) samples of all its `ok` seeds pooled, so latent runs of a few samples each reach
    the minimum counts; below them the value stays empty and `pooled_samples` says why."""
    from safetensors.torch import load_file

    from evals.metrics import distribution_distances

    keys, rows = ["task", "wrt", "variant", "steps"], []
    done = summary[(summary["status"] == "ok") & summary.get("samples_file", pd.Series(index=summary.index)).notna()]
    done = done[done["model"].fillna("embedded") == "embedded"]
    for key, group in done.groupby(keys):
        files = [load_file(path) for path in group["samples_file"]]
        row = dict(zip(keys, key))
        for part in ("final", "baseline"):
            samples = torch.cat([f[part] for f in files])
            distances = distribution_distances(samples, reference, classifier)
            row.update({f"{part}_pooled_{k}": v for k, v in distances.items() if not k.endswith("_note")})
            row["pooled_samples"] = len(samples)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else keys)


def write_csv(frame: pd.DataFrame, path: Path | str) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def fidelity_table(paths: list[Path | str]) -> pd.DataFrame:
    """One row per (parameter type, T, estimator variant) from the bench rows."""
    frame = pd.json_normalize([json.loads(Path(p).read_text()) for p in paths])
    return frame.sort_values(["wrt", "steps", "variant"], kind="stable").reset_index(drop=True)

"""Tidy tables from run records: one row per run x iteration, and one per run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from evals.records import write_atomic

RUN_KEYS = ("task", "method", "steps", "seed", "batch", "target", "guidance", "eta")


def _run_columns(record: dict, path: Path) -> dict:
    config = record["config"]
    columns = {key: config.get(key) for key in RUN_KEYS}
    options = config.get("options") or {}
    columns["variant"] = config["method"] + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))
    columns.update(status=record["status"], reason=record.get("reason"), device=record["device"], record=str(path))
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
                "saved_bytes": max((row["saved_bytes"] for row in iterations), default=None),
                "nfe_forward": iterations[0]["nfe_forward"] if iterations else None,
                "nfe_backward": iterations[0]["nfe_backward"] if iterations else None,
                **{f"final_{k}": v for k, v in (record.get("final") or {}).items()},
                **{f"baseline_{k}": v for k, v in (record.get("baseline") or {}).items()},
            }
        )
    return pd.DataFrame(iteration_rows), pd.DataFrame(summary_rows)


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, variant, T): finished runs and every status seen, median seconds per iteration, peak
    autograd bytes, and the final metrics averaged over seeds, the reward with a normal 95%
    half-width across seeds (each seed's value is already a mean over its samples)."""
    keys = ["task", "variant", "steps"]
    finished = summary[summary["status"] == "ok"]
    metrics = [c for c in finished.columns if c.startswith(("final_", "baseline_")) and pd.api.types.is_numeric_dtype(finished[c])]
    table = finished.groupby(keys).agg(
        runs=("seed", "size"),
        seconds_per_iter=("seconds_per_iter", "median"),
        saved_bytes=("saved_bytes", "max"),
        **{c: (c, "mean") for c in metrics},
    )
    spread = finished.groupby(keys)["final_reward_mean"].agg(["std", "size"])
    table["final_reward_ci95_seeds"] = 1.96 * spread["std"] / spread["size"] ** 0.5
    status = summary.groupby(keys)["status"].agg(lambda s: ",".join(sorted(set(s))))
    table = table.join(status, how="outer")
    table["runs"] = table["runs"].fillna(0).astype(int)
    return table.reset_index()


def write_csv(frame: pd.DataFrame, path: Path | str) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def fidelity_table(paths: list[Path | str]) -> pd.DataFrame:
    """One row per (parameter type, T, estimator variant) from the bench rows."""
    frame = pd.DataFrame([json.loads(Path(p).read_text()) for p in paths])
    return frame.sort_values(["wrt", "steps", "variant"], kind="stable").reset_index(drop=True)

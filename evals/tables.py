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


def write_csv(frame: pd.DataFrame, path: Path | str) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def fidelity_table(paths: list[Path | str]) -> pd.DataFrame:
    """One row per (parameter type, T, estimator variant) from the bench rows."""
    frame = pd.DataFrame([json.loads(Path(p).read_text()) for p in paths])
    return frame.sort_values(["wrt", "steps", "variant"], kind="stable").reset_index(drop=True)

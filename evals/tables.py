"""Tidy tables from run records: one row per run x iteration, per run, per run x held-out
evaluation and per run x audit; one per model x task x variant x chain over seeds; guided passes
beside the latent runs at equal seconds. Every table comes out whatever the runs' statuses: a
run that failed, diverged or ran out of memory is a row with its status and reason, and an empty
table keeps its columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

from evals.chains import chain_of, experiment_of
from evals.outcomes import STATUSES
from evals.records import write_atomic
from sdo.tasks import TASKS

RUN_KEYS = ("model", "task", "variant", "method", "steps", "seed", "batch", "cfg_scale", "reward", "precision")
KEYS = ["model", "task", "wrt", "variant", "chain"]
CHAIN_COLUMNS = ("chain", "ran_chain", "start_step", "init")


def _run_columns(record: dict, path: Path) -> dict:
    config = record["config"]
    columns = {key: config.get(key) for key in RUN_KEYS}
    columns["task"] = experiment_of(config)
    columns.update(chain_of(config))
    columns.update({key: record[key] for key in CHAIN_COLUMNS if key in record})
    columns["sampler"] = record.get("sampler") or config.get("sampler")
    columns["variant"] = record.get("variant") or config.get("variant")
    columns["wrt"] = TASKS[config["task"]].wrt if config.get("task") in TASKS else None
    columns["options"] = json.dumps(config.get("options") or {}, sort_keys=True)
    columns.update(
        status=record["status"],
        reason=record.get("reason"),
        device=record.get("device"),
        record=str(path),
        samples_file=record.get("samples_file"),
    )
    return columns


def read_records(paths: list[Path | str]) -> list[tuple[Path, dict]]:
    return [(Path(path), json.loads(Path(path).read_text())) for path in paths]


def runs_table(records: list[tuple[Path, dict]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(iterations, summary): per-iteration rows, and per-run rows with final metrics, the
    median seconds per iteration after the first (warm-up) iteration, autograd's bytes, the
    start deviation and the audits' lowest cosine. Runs that did not finish keep a row with
    their status and reason."""
    iteration_rows, summary_rows = [], []
    for path, record in records:
        run = _run_columns(record, path)
        iterations = record.get("iterations") or []
        iteration_rows += [{**run, **row} for row in iterations] or [run]
        timed = [row["seconds"] for row in iterations[1:]] or [row["seconds"] for row in iterations]
        audits = record.get("audits") or []
        summary_rows.append(
            {
                **run,
                "iters": len(iterations),
                "seconds_per_iter": pd.Series(timed, dtype=float).median(),
                "saved_bytes": record.get("saved_bytes"),
                "nfe_forward": iterations[0]["nfe_forward"] if iterations else None,
                "nfe_backward": iterations[0]["nfe_backward"] if iterations else None,
                "start_deviation": record.get("start_deviation", 0.0),
                "warmup_cost": record.get("warmup_nfe_forward", 0),
                "warmup_seconds": record.get("warmup_seconds", 0.0),
                "skipped_steps": record.get("skipped_steps", 0),
                "audits": len(audits),
                "audit_min_cosine": min((a["cosine"] for a in audits), default=None),
                "fallbacks": sum(bool(a.get("fallback")) for a in audits),
                **{f"final_{k}": v for k, v in (record.get("final") or {}).items()},
                **{f"start_{k}": v for k, v in (record.get("start") or {}).items()},
            }
        )
    return pd.DataFrame(iteration_rows), pd.DataFrame(
        summary_rows, columns=None if summary_rows else [*KEYS, "seed", "status"]
    )


def evaluations_table(records: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per run x held-out evaluation, diverged runs' evaluations included (they say
    how far a run got); columns say the run and its status."""
    rows = []
    for _, record in records:
        config = record["config"]
        run = {
            "model": config.get("model"),
            "task": experiment_of(config),
            "steps": config.get("steps"),
            **chain_of(config),
            "variant": record.get("variant"),
            "seed": config.get("seed"),
            "status": record["status"],
            "wrt": TASKS[config["task"]].wrt if config.get("task") in TASKS else None,
            "device": record.get("device"),
        }
        rows += [{**run, **row} for row in record.get("evaluations") or []]
    return pd.DataFrame(rows, columns=None if rows else [*KEYS, "seed", "status", "iter", "reward", "seconds", "nfe"])


def audits_table(records: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per run x audit of the online fidelity audit: the cosine, relative error and
    norm ratio of the run's gradient against the exact one, and whether it fell back."""
    rows = []
    for _, record in records:
        config = record["config"]
        run = {
            "model": config.get("model"),
            "task": experiment_of(config),
            "steps": config.get("steps"),
            **chain_of(config),
            "variant": record.get("variant"),
            "seed": config.get("seed"),
            "status": record["status"],
            "fallback_below": config.get("fallback_below"),
            "device": record.get("device"),
        }
        rows += [{**run, **row} for row in record.get("audits") or []]
    return pd.DataFrame(
        rows,
        columns=None
        if rows
        else [
            "model",
            "task",
            "steps",
            "chain",
            "variant",
            "seed",
            "iter",
            "cosine",
            "rel_error",
            "norm_ratio",
            "fallback",
        ],
    )


def status_counts(summary: pd.DataFrame) -> dict[str, int]:
    """How many runs ended with each status."""
    counts = summary["status"].value_counts().to_dict() if len(summary) else {}
    return {status: int(counts.get(status, 0)) for status in sorted(set(STATUSES) | set(counts))}


def t_half_width(values: pd.Series, level: float = 0.95) -> float:
    """Half-width of the Student-t interval for the mean of `values` (NaN below two values)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5)


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, variant, T): the count of runs per status (`runs` counts the
    `ok` ones; diverged, failed and other runs are counted apart and excluded from the
    averages), median seconds per iteration, peak autograd bytes, and the final metrics
    averaged over the `ok` seeds, the reward with a Student-t 95% half-width across seeds (each
    seed's value is already a mean over its samples)."""
    if summary.empty:
        return pd.DataFrame(columns=[*KEYS, "runs"])
    counts = summary.groupby(KEYS, dropna=False)["status"].value_counts().unstack(fill_value=0)
    counts = counts.rename(columns=lambda status: "runs" if status == "ok" else f"runs_{status}")
    if "runs" not in counts:
        counts.insert(0, "runs", 0)
    finished = summary[summary["status"] == "ok"]
    if finished.empty:
        return counts.reset_index()
    metrics = [
        c
        for c in finished.columns
        if c.startswith(("final_", "start_"))
        and c not in ("start_step", "start_deviation")
        and pd.api.types.is_numeric_dtype(finished[c])
    ]
    averages = finished.groupby(KEYS, dropna=False).agg(
        device=("device", lambda d: "; ".join(sorted(set(map(str, d))))),
        seconds_per_iter=("seconds_per_iter", "median"),
        saved_bytes=("saved_bytes", "max"),
        start_deviation=("start_deviation", "max"),
        **{c: (c, "mean") for c in metrics},
    )
    if "final_reward_mean" in finished:
        averages["final_reward_ci95_seeds"] = finished.groupby(KEYS, dropna=False)["final_reward_mean"].agg(
            t_half_width
        )
    return counts.join(averages, how="left").reset_index()


def pooled_quality(summary: pd.DataFrame, classifier, reference) -> pd.DataFrame:
    """FID and KID of each (model, task, variant, T) of a digits model over the final (and
    baseline) samples of all its `ok` seeds pooled, so latent runs of a few samples each reach
    the minimum counts; below them the value stays empty and `pooled_samples` says why."""
    from safetensors.torch import load_file

    from evals.metrics import distribution_distances
    from sdo.models import resolve

    rows = []
    if summary.empty or "samples_file" not in summary:
        return pd.DataFrame(columns=KEYS)
    done = summary[(summary["status"] == "ok") & summary["samples_file"].notna()]
    done = done[done["model"].map(lambda m: resolve(str(m)).cls.domain == "digits").astype(bool)]
    for key, group in done.groupby(KEYS):
        files = [load_file(path) for path in group["samples_file"]]
        row = dict(zip(KEYS, key))
        for part in ("final", "start"):
            samples = torch.cat([f[part] for f in files])
            distances = distribution_distances(samples, reference, classifier)
            row.update({f"{part}_pooled_{k}": v for k, v in distances.items() if not k.endswith("_note")})
            row["pooled_samples"] = len(samples)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else KEYS)


def write_csv(frame: pd.DataFrame, path: Path | str) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def fidelity_table(paths: list[Path | str]) -> pd.DataFrame:
    """One row per (model, parameter type, T, estimator variant) from the bench rows."""
    frame = pd.json_normalize([json.loads(Path(p).read_text()) for p in paths])
    if "config.model" in frame:
        frame.insert(0, "model", frame["config.model"])
    return frame.sort_values(
        [c for c in ("model", "wrt", "steps", "variant") if c in frame], kind="stable"
    ).reset_index(drop=True)


def guidance_table(guided: list[Path | str], evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per guided record and latent-task variant on the same chain and seed: the
    guidance's seconds and final reward (and the domain's distance to real data where it has
    one), beside the variant's held-out evaluation at the most training seconds that fit the
    same budget (`optimised_*`; empty when not even the first update fits)."""
    latent = (
        evaluations[(evaluations["task"] == "latent") & (evaluations["status"] == "ok")]
        if len(evaluations)
        else evaluations
    )
    shown = ("seconds", "reward", "target_accuracy", "nn_distance")
    rows = []
    for path in map(Path, guided):
        record = json.loads(path.read_text())
        if record["status"] != "ok":
            continue
        config, final = record["config"], record["final"]
        base = {
            "model": config["model"],
            "chain": chain_of(config)["chain"],
            "steps": config["steps"],
            "seed": config["seed"],
            "guided_pass": record["variant"],
            "repeats": config["repeats"],
            "scale": config["scale"],
            "seconds": record["seconds"],
            "nfe": record["nfe_forward"] + record["nfe_backward"],
            "reward": final.get("reward_mean"),
            "target_accuracy": final.get("target_accuracy"),
            "nn_distance": final.get("nn_distance"),
            "device": record["device"],
        }
        same = (
            latent[
                (latent["model"] == base["model"])
                & (latent["chain"] == base["chain"])
                & (latent["seed"] == base["seed"])
            ]
            if len(latent)
            else latent
        )
        for variant, run in same.groupby("variant") if len(same) else []:
            within = run[run["seconds"] <= base["seconds"]].sort_values("seconds")
            best = within.iloc[-1] if len(within) else None
            rows.append(
                {
                    **base,
                    "variant": variant,
                    "optimised_iter": None if best is None else best["iter"],
                    **{f"optimised_{k}": (None if best is None else best.get(k)) for k in shown},
                }
            )
        if not len(same):
            rows.append(base)
    return pd.DataFrame(rows)

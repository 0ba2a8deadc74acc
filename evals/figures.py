"""Figures drawn only from tables, each naming the device its numbers came from."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from evals.records import write_atomic  # noqa: E402


def _colours(variants) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(sorted(variants))}


def _save(figure, path: Path | str, devices, top: float = 0.94) -> None:
    figure.text(0.99, 0.005, "device: " + "; ".join(sorted(set(devices))), ha="right", va="bottom", fontsize=7, color="0.4")
    figure.tight_layout(rect=(0, 0.03, 1, top))
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=130, format="png"))
    plt.close(figure)


def reward_vs_iter(iterations: pd.DataFrame, path: Path | str) -> None:
    """Mean reward against iteration: one row of panels per task, one panel per step count, one
    line per estimator (band: min to max over seeds)."""
    done = iterations[iterations["status"] == "ok"]
    tasks, steps = sorted(done["task"].unique()), sorted(done["steps"].unique())
    colours = _colours(done["variant"].unique())
    figure, axes = plt.subplots(len(tasks), len(steps), figsize=(3.6 * len(steps), 2.9 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, t in enumerate(steps):
            axis = axes[i][j]
            for variant, rows in done[(done["task"] == task) & (done["steps"] == t)].groupby("variant"):
                stats = rows.groupby("iter")["reward"].agg(["mean", "min", "max"])
                axis.plot(stats.index, stats["mean"], color=colours[variant], label=variant, lw=1.6)
                axis.fill_between(stats.index, stats["min"], stats["max"], color=colours[variant], alpha=0.15)
            axis.set_title(f"{task} · T = {t}", fontsize=10)
            axis.set_xlabel("iteration")
            axis.grid(alpha=0.3)
            axis.set_visible(bool(axis.lines))
        axes[i][0].set_ylabel("reward (batch mean)")
    _legend(figure, axes)
    _save(figure, path, iterations["device"])


def cost_vs_steps(summary: pd.DataFrame, path: Path | str) -> None:
    """Seconds per iteration and autograd bytes against T, log scales: one row per task, one
    line per estimator."""
    done = summary[summary["status"] == "ok"]
    tasks = sorted(done["task"].unique())
    colours = _colours(done["variant"].unique())
    figure, axes = plt.subplots(len(tasks), 2, figsize=(9, 3.0 * len(tasks)), squeeze=False)
    for (seconds, memory), task in zip(axes, tasks):
        rows = done[done["task"] == task]
        for variant, group in rows.groupby("variant"):
            stats = group.groupby("steps")[["seconds_per_iter", "saved_bytes"]].median()
            seconds.plot(stats.index, stats["seconds_per_iter"], "o-", ms=3, color=colours[variant], label=variant)
            memory.plot(stats.index, stats["saved_bytes"] / 2**20, "o-", ms=3, color=colours[variant], label=variant)
        seconds.set(ylabel="seconds per iteration", title=f"{task}: time")
        memory.set(ylabel="autograd MiB (peak)", title=f"{task}: memory kept by autograd")
        ticks = sorted(rows["steps"].unique())
        for axis in (seconds, memory):
            _log_axes(axis, ticks)
            axis.set_xlabel("DDIM steps T")
    _legend(figure, axes)
    _save(figure, path, summary["device"])


def _log_axes(axis, ticks) -> None:
    """Log-log axes labelled with plain numbers, the x ticks at the measured step counts."""
    axis.set(xscale="log", yscale="log")
    axis.set_xticks(ticks, labels=ticks)
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    axis.grid(alpha=0.3, which="both")


def _legend(figure, axes) -> None:
    """One legend for the figure with every line label that appears in any panel."""
    labels = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    figure.legend(list(labels.values()), list(labels), loc="upper center", ncol=min(6, len(labels)), fontsize=8, frameon=False)


def _by_kind(frame: pd.DataFrame, rows: list[tuple[str, str, bool]], path: Path | str, title: str) -> None:
    """A grid: one row per (column, label, log-y), one column per parameter type, a line per variant."""
    done = frame[frame["status"] == "ok"]
    kinds = [k for k in ("latent", "cond", "weights") if k in set(frame["wrt"])]
    colours = _colours(frame["variant"].unique())
    ticks = sorted(frame["steps"].unique())
    figure, axes = plt.subplots(len(rows), len(kinds), figsize=(4.2 * len(kinds), 3.0 * len(rows)), squeeze=False)
    for j, kind in enumerate(kinds):
        for variant, group in done[done["wrt"] == kind].groupby("variant"):
            group = group.sort_values("steps")
            for i, (column, _, _) in enumerate(rows):
                axes[i][j].plot(group["steps"], group[column], "o-", ms=3, color=colours[variant], label=variant)
        for i, (_, label, logy) in enumerate(rows):
            axis = axes[i][j]
            _log_axes(axis, ticks)
            axis.set(yscale="log" if logy else "linear", xlabel="DDIM steps T", ylabel=label, title=f"{title}: {kind}")
    _legend(figure, axes)
    _save(figure, path, frame["device"], top=0.92)


def fidelity_vs_steps(fidelity: pd.DataFrame, path: Path | str) -> None:
    """Cosine and relative error of each estimator's gradient against full backpropagation."""
    _by_kind(
        fidelity,
        [("cosine", "cosine with full", False), ("rel_error", "relative error vs full", True)],
        path,
        "fidelity",
    )


def bench_cost_vs_steps(fidelity: pd.DataFrame, path: Path | str) -> None:
    """Seconds per gradient, autograd bytes and peak memory against T, log scales."""
    frame = fidelity.assign(saved_mib=fidelity["saved_bytes"] / 2**20, peak_mib=fidelity["peak_bytes"] / 2**20)
    _by_kind(
        frame,
        [("seconds", "seconds per gradient", True), ("saved_mib", "autograd MiB (peak)", True), ("peak_mib", "peak memory MiB", True)],
        path,
        "cost",
    )

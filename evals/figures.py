"""Figures drawn only from tables, each naming the device its numbers came from."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from evals.records import write_atomic  # noqa: E402


def _colours(variants) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(sorted(variants))}


def _save(figure, path: Path | str, devices) -> None:
    figure.text(0.99, 0.005, "device: " + "; ".join(sorted(set(devices))), ha="right", va="bottom", fontsize=7, color="0.4")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=130, format="png"))
    plt.close(figure)


def reward_vs_iter(iterations: pd.DataFrame, path: Path | str) -> None:
    """Mean reward against iteration, one panel per step count, one line per estimator
    (band: min to max over seeds)."""
    done = iterations[iterations["status"] == "ok"]
    steps = sorted(done["steps"].unique())
    colours = _colours(done["variant"].unique())
    figure, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.4), sharey=True, squeeze=False)
    for axis, t in zip(axes[0], steps):
        for variant, rows in done[done["steps"] == t].groupby("variant"):
            stats = rows.groupby("iter")["reward"].agg(["mean", "min", "max"])
            axis.plot(stats.index, stats["mean"], color=colours[variant], label=variant, lw=1.8)
            axis.fill_between(stats.index, stats["min"], stats["max"], color=colours[variant], alpha=0.15)
        axis.set(title=f"T = {t}", xlabel="iteration")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("reward (mean over batch)")
    axes[0][-1].legend(fontsize=8)
    _save(figure, path, iterations["device"])


def cost_vs_steps(summary: pd.DataFrame, path: Path | str) -> None:
    """Seconds per iteration and autograd bytes against T, log scale, one line per estimator."""
    done = summary[summary["status"] == "ok"]
    colours = _colours(done["variant"].unique())
    figure, (seconds, memory) = plt.subplots(1, 2, figsize=(9, 3.6))
    for variant, rows in done.groupby("variant"):
        stats = rows.groupby("steps")[["seconds_per_iter", "saved_bytes"]].median()
        seconds.plot(stats.index, stats["seconds_per_iter"], "o-", color=colours[variant], label=variant)
        memory.plot(stats.index, stats["saved_bytes"] / 2**20, "o-", color=colours[variant], label=variant)
    seconds.set(xlabel="DDIM steps T", ylabel="seconds per iteration", xscale="log", yscale="log", title="time")
    memory.set(xlabel="DDIM steps T", ylabel="autograd MiB (peak)", xscale="log", yscale="log", title="memory kept by autograd")
    for axis in (seconds, memory):
        axis.grid(alpha=0.3, which="both")
        axis.set_xticks(sorted(done["steps"].unique()), labels=sorted(done["steps"].unique()))
    memory.legend(fontsize=8)
    _save(figure, path, summary["device"])


def _by_kind(frame: pd.DataFrame, rows: list[tuple[str, str, bool]], path: Path | str, title: str) -> None:
    """A grid: one row per (column, label, log-y), one column per parameter type, a line per variant."""
    done = frame[frame["status"] == "ok"]
    kinds = [k for k in ("latent", "cond", "weights") if k in set(frame["wrt"])]
    colours = _colours(frame["variant"].unique())
    figure, axes = plt.subplots(len(rows), len(kinds), figsize=(4.2 * len(kinds), 3.2 * len(rows)), squeeze=False)
    for j, kind in enumerate(kinds):
        for variant, group in done[done["wrt"] == kind].groupby("variant"):
            group = group.sort_values("steps")
            for i, (column, _, _) in enumerate(rows):
                axes[i][j].plot(group["steps"], group[column], "o-", ms=3, color=colours[variant], label=variant)
        for i, (_, label, logy) in enumerate(rows):
            axis = axes[i][j]
            axis.set(xscale="log", yscale="log" if logy else "linear", xlabel="DDIM steps T", ylabel=label)
            axis.set_title(f"{kind}", fontsize=10)
            axis.grid(alpha=0.3, which="both")
            ticks = sorted(frame["steps"].unique())
            axis.set_xticks(ticks, labels=ticks)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.suptitle(title)
    figure.subplots_adjust(right=0.82)
    figure.text(0.99, 0.005, "device: " + "; ".join(sorted(set(frame["device"]))), ha="right", va="bottom", fontsize=7, color="0.4")
    figure.tight_layout(rect=(0, 0.03, 0.84, 0.97))
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=130, format="png"))
    plt.close(figure)


def fidelity_vs_steps(fidelity: pd.DataFrame, path: Path | str) -> None:
    """Cosine and relative error of each estimator's gradient against full backpropagation."""
    _by_kind(
        fidelity,
        [("cosine", "cosine with full", False), ("rel_error", "relative error vs full", True)],
        path,
        "gradient fidelity against full backpropagation",
    )


def bench_cost_vs_steps(fidelity: pd.DataFrame, path: Path | str) -> None:
    """Seconds per gradient, autograd bytes and peak memory against T, log scales."""
    frame = fidelity.assign(saved_mib=fidelity["saved_bytes"] / 2**20, peak_mib=fidelity["peak_bytes"] / 2**20)
    _by_kind(
        frame,
        [("seconds", "seconds per gradient", True), ("saved_mib", "autograd MiB (peak)", True), ("peak_mib", "peak memory MiB", True)],
        path,
        "cost of one gradient",
    )

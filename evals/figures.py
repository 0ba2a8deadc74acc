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


def _curves(evaluations: pd.DataFrame, x: str, xlabel: str, path: Path | str, metrics=(("reward", "held-out reward"),)) -> None:
    """Held-out evaluation curves: a row of panels per (task, metric), a column per T, a line per
    variant (mean over seeds against the mean x; band: Student-t 95% interval over seeds)."""
    from evals.tables import t_half_width

    tasks, steps = sorted(evaluations["task"].unique()), sorted(evaluations["steps"].unique())
    metrics = [(m, label) for m, label in metrics if m in evaluations]
    colours = _colours(evaluations["variant"].unique())
    rows = [(task, metric, label) for task in tasks for metric, label in metrics]
    figure, axes = plt.subplots(len(rows), len(steps), figsize=(3.8 * len(steps), 2.9 * len(rows)), squeeze=False)
    for i, (task, metric, label) in enumerate(rows):
        for j, t in enumerate(steps):
            axis = axes[i][j]
            for variant, group in evaluations[(evaluations["task"] == task) & (evaluations["steps"] == t)].groupby("variant"):
                stats = group.groupby("iter").agg(x=(x, "mean"), y=(metric, "mean"), half=(metric, t_half_width))
                axis.plot(stats["x"], stats["y"], "o-", ms=2.5, color=colours[variant], label=variant, lw=1.5)
                axis.fill_between(stats["x"], stats["y"] - stats["half"], stats["y"] + stats["half"], color=colours[variant], alpha=0.12)
            axis.set_title(f"{task} · T = {t}", fontsize=10)
            axis.set_xlabel(xlabel)
            axis.grid(alpha=0.3)
            axis.set_visible(bool(axis.lines))
        axes[i][0].set_ylabel(label)
    if any(str(v).startswith("doodl") for v in colours):
        figure.text(0.01, 0.005, "doodl samples with EDICT, not DDIM: it starts elsewhere at small T", fontsize=7, color="0.4")
    _legend(figure, axes)
    _save(figure, path, evaluations["device"])


def reward_vs_iter(evaluations: pd.DataFrame, path: Path | str) -> None:
    """Held-out reward and distance to real data against iterations."""
    _curves(evaluations, "iter", "iteration", path, METRICS)


def reward_vs_seconds(evaluations: pd.DataFrame, path: Path | str) -> None:
    """Held-out reward and distance to real data against training wall-clock seconds: the
    convergence curves cost at equal quality is read from."""
    _curves(evaluations, "seconds", "training seconds", path, METRICS)


METRICS = (("reward", "held-out reward"), ("nn_distance", "distance to real digits\n(1 = as real data; lower is better)"))


def tradeoff(methods: pd.DataFrame, path: Path | str) -> None:
    """Final held-out reward, and distance to real data, against seconds per iteration: one
    point per variant x T (bigger markers for larger T), one panel pair per task."""
    done = methods[methods["runs"] > 0]
    tasks = sorted(done["task"].unique())
    colours = _colours(done["variant"].unique())
    figure, axes = plt.subplots(len(tasks), 2, figsize=(9, 3.2 * len(tasks)), squeeze=False)
    sizes = {t: 12 + 10 * i for i, t in enumerate(sorted(done["steps"].unique()))}
    for (reward, realism), task in zip(axes, tasks):
        for variant, group in done[done["task"] == task].groupby("variant"):
            group = group.sort_values("steps")
            for axis, column in ((reward, "final_reward_mean"), (realism, "final_nn_distance")):
                if column not in group:
                    continue
                axis.plot(group["seconds_per_iter"], group[column], "-", color=colours[variant], alpha=0.4, lw=1)
                axis.scatter(group["seconds_per_iter"], group[column], s=group["steps"].map(sizes), color=colours[variant], label=variant)
            if "final_reward_ci95_seeds" in group:
                reward.errorbar(group["seconds_per_iter"], group["final_reward_mean"], yerr=group["final_reward_ci95_seeds"],
                                fmt="none", ecolor=colours[variant], alpha=0.5, lw=1)
        reward.set(xscale="log", xlabel="seconds per iteration", ylabel="final reward (mean over seeds)", title=f"{task}: reward")
        realism.set(xscale="log", xlabel="seconds per iteration", ylabel="distance to real digits", title=f"{task}: quality")
        for axis in (reward, realism):
            axis.grid(alpha=0.3, which="both")
    figure.text(0.01, 0.005, "marker size: T (" + ", ".join(map(str, sizes)) + ")", fontsize=7, color="0.4")
    _legend(figure, axes)
    _save(figure, path, done["device"])


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


def _strip(images):
    """Images (B, C, H, W) in [-1, 1] side by side as one (H, B*W[, 3]) array in [0, 1]."""
    images = (images.float().clamp(-1, 1) + 1) / 2
    row = images.permute(2, 0, 3, 1).flatten(1, 2).numpy()
    return row[..., 0] if row.shape[-1] == 1 else row


def sample_grids(summary: pd.DataFrame, path: Path | str, per_row: int = 8) -> None:
    """Start against end: for each task at its largest T and lowest seed, one row per variant,
    `per_row` samples from the starting parameters (left) and the optimised ones (right), the
    same noise in both."""
    from safetensors.torch import load_file

    done = summary[(summary["status"] == "ok") & summary.get("samples_file", pd.Series(index=summary.index)).notna()]
    picked = [group[(group["steps"] == group["steps"].max())].sort_values("seed").drop_duplicates("variant")
              for _, group in done.groupby("task")]
    rows = pd.concat(picked) if picked else done
    figure, axes = plt.subplots(max(len(rows), 1), 2, figsize=(2 * per_row * 0.55, 0.75 * max(len(rows), 1) + 0.6), squeeze=False)
    for (start, end), row in zip(axes, rows.itertuples()):
        tensors = load_file(row.samples_file)
        for axis, key in ((start, "baseline"), (end, "final")):
            axis.imshow(_strip(tensors[key][:per_row]), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([]), axis.set_yticks([])
        start.set_ylabel(f"{row.task}\n{row.variant}\nT={row.steps}", rotation=0, ha="right", va="center", fontsize=7)
    axes[0][0].set_title("start (same noise)", fontsize=9)
    axes[0][1].set_title("end", fontsize=9)
    _save(figure, path, rows["device"] if len(rows) else ["none"], top=0.97)

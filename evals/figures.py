"""Figures drawn only from tables, each naming the device its numbers came from. A table with no
finished runs still gives a figure, which says so."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from evals.records import write_atomic  # noqa: E402

LONG_LEGEND = 8  # lines past which a figure's legend stands beside its panels, not above them
VERDICT_COLOURS = {"holds": "#2a9d4b", "refuted": "#c0392b", "inconclusive": "#7f8c8d", "invalid_start": "#d4a017"}


def _ordered(chains) -> list[str]:
    """Chain labels in the order T, then start step (T10, T50, T50-from10-invert, T50-from45)."""

    def key(label: str):
        parts = label.split("-")
        start = next((int(p[4:]) for p in parts if p.startswith("from")), 0)
        return int(parts[0][1:]), start, label

    return sorted(set(map(str, chains)), key=key)


def _colours(variants) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(sorted(map(str, variants)))}


def devices_of(frame: pd.DataFrame):
    return frame["device"].dropna().astype(str) if "device" in frame else []


def _save(figure, path: Path | str, devices, top: float = 0.94, legend=None) -> None:
    """Name the devices, lay the panels out below `top`, draw one legend for the lines of the
    `legend` axes if given, and write the figure with nothing cut off."""
    shown = sorted(set(devices)) or ["not recorded"]
    figure.text(0.99, 0.005, "device: " + "; ".join(shown), ha="right", va="bottom", fontsize=7, color="0.4")
    if legend is not None:
        _legend(figure, legend, top)
    figure.tight_layout(rect=(0, 0.03, 1, top))
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=130, format="png", bbox_inches="tight", pad_inches=0.1))
    plt.close(figure)


def _empty(path: Path | str, what: str) -> None:
    """A figure that says there was nothing to draw."""
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, f"no {what}: see the tables' status counts", ha="center", va="center", fontsize=11)
    _save(figure, path, [])


def _legend(figure, axes, top: float) -> None:
    """One legend for the figure with every line label that appears in any panel: up to
    LONG_LEGEND lines in a row above the panels (which end at `top`), more in a column per twenty
    lines beside them."""
    labels = {}
    for axis in np.ravel(axes):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    if not labels:
        return
    n, long = len(labels), len(labels) > LONG_LEGEND
    figure.legend(
        list(labels.values()),
        list(labels),
        ncols=1 + (n - 1) // 20 if long else min(6, n),
        loc="center left" if long else "lower center",
        bbox_to_anchor=(1.0, (0.03 + top) / 2) if long else (0.5, top),
        fontsize=8,
        frameon=False,
    )


def verdicts(table: pd.DataFrame, path: Path | str, devices=()) -> None:
    """The answer at a glance: for each model, task and chain, the subject's paired cost ratio to
    each peer (IQM over seeds, bootstrap interval; log scale, in the load-free cost unit),
    coloured by the verdict on the paper's claim, with the claim's threshold and parity marked.
    An interval with no lower or upper limit (censored runs) runs off the edge as an arrow."""
    if table.empty or "ratio" not in table:
        return _empty(path, "verdicts")
    claim = table["threshold"].min()
    rows = table[table["threshold"] == claim].reset_index(drop=True)
    labels = [f"{r.model} · {r.task} · {r.chain}  vs {r.peer} ({r.peer_chain})" for r in rows.itertuples()]
    values = pd.concat([rows["ratio"], rows["ratio_low"], rows["ratio_high"]])
    values = values[np.isfinite(values) & (values > 0)]
    left, right = min([claim / 2, *values]) / 1.3, max([2.0, *values]) * 1.3
    figure, axis = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows.itertuples()):
        colour = VERDICT_COLOURS.get(row.verdict, "0.5")
        low = row.ratio_low if np.isfinite(row.ratio_low) and row.ratio_low > 0 else left
        high = row.ratio_high if np.isfinite(row.ratio_high) else right
        axis.plot([low, high], [yi, yi], color=colour, lw=3, alpha=0.6, solid_capstyle="butt")
        for edge, open_ in ((left, low == left), (right, high == right)):
            if open_:
                axis.plot(edge, yi, "<" if edge == left else ">", color=colour, alpha=0.8, ms=7)
        if np.isfinite(row.ratio):
            axis.plot(row.ratio, yi, "o", color=colour, ms=6, label=row.verdict)
        if getattr(row, "reward_hacked", False) is True:
            axis.text(
                row.ratio if np.isfinite(row.ratio) else 1, yi + 0.25, "reward hacked", fontsize=7, color="#c0392b"
            )
    axis.axvline(claim, color="#2a9d4b", ls="--", lw=1)
    axis.axvline(1.0, color="0.3", ls=":", lw=1)
    axis.text(claim, len(rows) - 0.35, f" claim: <= {claim:g} x", fontsize=8, color="#2a9d4b", va="top")
    axis.set_yticks(y, labels, fontsize=8)
    axis.set_xscale("log")
    axis.set_xlim(left, right)
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    unit = rows["unit"].iloc[0]
    axis.set_xlabel(
        f"{rows['subject'].iloc[0]}'s cost to reach the target / the peer's ({unit}: forward-pass equivalents)"
        "\narrows: no limit on that side (runs that never reached the target)",
        fontsize=9,
    )
    axis.grid(alpha=0.3, which="both", axis="x")
    axis.set_ylim(-0.7, len(rows) - 0.3)
    _save(figure, path, devices, top=0.93, legend=[axis])


def cost_vs_steps(table: pd.DataFrame, path: Path | str, devices=(), full: str = "full") -> None:
    """The step axis: for each model and task, the subject's paired cost ratio to full
    backpropagation on the same chain and to full through the whole chain (partial chains),
    with its interval, against the chain (T, then the start step), on a log scale; the paper's
    claim dashed, parity dotted."""
    if table.empty or "ratio" not in table or "chain" not in table:
        return _empty(path, "verdicts")
    claim = table["threshold"].min()
    rows = table[(table["threshold"] == claim) & table["verdict"].ne("invalid_start")]
    rows = rows[(rows["peer"] == full) | (rows["peer_chain"] != rows["subject_chain"])]  # whole-chain peers too
    if rows.empty:
        return _empty(path, "ratios to full backpropagation")
    panels = sorted(rows.groupby(["model", "task"]).groups)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for axis, (model, task) in zip(axes.flat, panels):
        panel = rows[(rows["model"] == model) & (rows["task"] == task)]
        chains = _ordered(panel["chain"])
        for same, group in panel.groupby(panel["peer_chain"] == panel["subject_chain"]):
            colour, shift = ("#3b6fb6", -0.08) if same else ("#e07a1f", 0.08)
            label = "vs full on the same chain" if same else "vs full through the whole chain (warm-up counted)"
            x = [chains.index(c) + shift for c in group["chain"]]
            low = (group["ratio"] - group["ratio_low"]).clip(lower=0)
            top = group["ratio_high"].where(np.isfinite(group["ratio_high"]), group["ratio"] * 10)
            high = (top - group["ratio"]).clip(lower=0)
            axis.errorbar(x, group["ratio"], yerr=[low, high], fmt="o", color=colour, capsize=3, label=label)
        axis.axhline(claim, color="#2a9d4b", ls="--", lw=1)
        axis.axhline(1.0, color="0.3", ls=":", lw=1)
        axis.set_xticks(range(len(chains)), chains, rotation=30, fontsize=8)
        axis.set_xlim(-0.5, len(chains) - 0.5)
        axis.set(
            yscale="log",
            title=f"{model} · {task}",
            xlabel="chain (T, start step)",
            ylabel=f"{panel['subject'].iloc[0]}'s cost to target / full's",
        )
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.title.set_fontsize(9)
        axis.grid(alpha=0.3, which="both", axis="y")
    _save(figure, path, devices, top=0.84, legend=axes)


def _curves(evaluations: pd.DataFrame, x: str, xlabel: str, path: Path | str, metrics) -> None:
    """Held-out evaluation curves: a row of panels per (model, task), a column per (chain, metric),
    a line per variant (mean over seeds against the mean x; band: Student-t 95% interval over
    seeds)."""
    from evals.tables import t_half_width

    if evaluations.empty or x not in evaluations:
        return _empty(path, "held-out evaluations")
    evaluations = evaluations[evaluations.get("status", "ok") == "ok"] if "status" in evaluations else evaluations
    if evaluations.empty:
        return _empty(path, "finished runs")
    groups = sorted(evaluations.groupby(["model", "task"]).groups)
    metrics = [(m, label) for m, label in metrics if m in evaluations and evaluations[m].notna().any()]
    columns = [(t, metric, label) for t in _ordered(evaluations["chain"]) for metric, label in metrics]
    colours = _colours(evaluations["variant"].unique())
    figure, axes = plt.subplots(
        len(groups), len(columns), figsize=(3.9 * len(columns), 2.9 * len(groups)), squeeze=False
    )
    for i, (model, task) in enumerate(groups):
        for j, (t, metric, label) in enumerate(columns):
            axis = axes[i][j]
            panel = evaluations[
                (evaluations["model"] == model) & (evaluations["task"] == task) & (evaluations["chain"] == t)
            ]
            for variant, group in panel.groupby("variant"):
                stats = group.groupby("iter").agg(x=(x, "mean"), y=(metric, "mean"), half=(metric, t_half_width))
                axis.plot(stats["x"], stats["y"], "o-", ms=2.5, color=colours[str(variant)], label=variant, lw=1.5)
                axis.fill_between(
                    stats["x"],
                    stats["y"] - stats["half"],
                    stats["y"] + stats["half"],
                    color=colours[str(variant)],
                    alpha=0.12,
                )
            axis.set_title(f"{model} · {task} · {t}", fontsize=9)
            axis.set_xlabel(xlabel, fontsize=8)
            axis.set_ylabel(label, fontsize=8)
            axis.grid(alpha=0.3)
            axis.set_visible(bool(axis.lines))
    if caveats := _caveats(evaluations):
        figure.text(0.01, 0.005, "; ".join(caveats), fontsize=7, color="0.4")
    _save(figure, path, devices_of(evaluations), top=1 - 0.5 / (2.9 * len(groups)), legend=axes)


def _caveats(rows: pd.DataFrame) -> list[str]:
    """The caveats of the estimators these rows ran, as their classes state them."""
    from sdo.estimators import ESTIMATORS

    methods = rows["method"].dropna().unique() if "method" in rows else []
    return [ESTIMATORS[m].caveat for m in sorted(methods) if m in ESTIMATORS and ESTIMATORS[m].caveat]


METRICS = (("reward", "held-out reward"), ("nn_distance", "distance to real data\n(1 = as real data; lower is better)"))


def reward_vs_cost(evaluations: pd.DataFrame, path: Path | str) -> None:
    """Held-out reward and distance to real data against the training cost in the load-free
    unit (network evaluations, a backward weighted by its measured cost): what the verdicts
    are read from."""
    _curves(evaluations, "cost", "training cost (forward-pass equivalents)", path, METRICS)


def reward_vs_seconds(evaluations: pd.DataFrame, path: Path | str) -> None:
    """Held-out reward and distance to real data against training wall-clock seconds."""
    _curves(evaluations, "seconds", "training seconds", path, METRICS)


def fidelity_along_runs(audits: pd.DataFrame, path: Path | str) -> None:
    """The online fidelity audit: each estimator's cosine with the exact gradient against the
    iteration (a thin line per run, the mean over seeds bold), one panel per model, task and
    chain; the fallback threshold dashed where one was set, audits below it marked."""
    if audits.empty or "cosine" not in audits:
        return _empty(path, "audits (set audit_every to audit a run)")
    panels = sorted(audits.groupby(["model", "task", "chain"]).groups)
    colours = _colours(audits["variant"].unique())
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, (model, task, chain) in zip(axes.flat, panels):
        panel = audits[(audits["model"] == model) & (audits["task"] == task) & (audits["chain"] == chain)]
        for variant, group in panel.groupby("variant"):
            colour = colours[str(variant)]
            for _, run in group.groupby("seed"):
                axis.plot(run["iter"], run["cosine"], "-", color=colour, alpha=0.25, lw=0.8)
            mean = group.groupby("iter")["cosine"].mean()
            axis.plot(mean.index, mean.values, "o-", color=colour, lw=2, ms=3, label=variant)
        threshold = panel["fallback_below"].dropna()
        if len(threshold):
            axis.axhline(float(threshold.iloc[0]), color="#c0392b", ls="--", lw=1)
            below = panel[panel["cosine"] < float(threshold.iloc[0])]
            axis.plot(below["iter"], below["cosine"], "x", color="#c0392b", ms=6, label="below threshold")
        axis.set(
            title=f"{model} · {task} · {chain}",
            xlabel="iteration",
            ylabel="cosine with the exact gradient",
            ylim=(-0.05, 1.05),
        )
        axis.title.set_fontsize(9)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    _save(figure, path, devices_of(audits), legend=axes)


def tradeoff(methods: pd.DataFrame, path: Path | str) -> None:
    """Final held-out reward, and distance to real data, against seconds per iteration: one
    point per variant x chain (bigger markers for later chains in the sweep's order), one panel
    pair per model and task."""
    done = methods[methods["runs"] > 0] if "runs" in methods else methods.iloc[0:0]
    if done.empty or "final_reward_mean" not in done:
        return _empty(path, "finished runs")
    panels = sorted(done.groupby(["model", "task"]).groups)
    colours = _colours(done["variant"].unique())
    figure, axes = plt.subplots(len(panels), 2, figsize=(9, 3.2 * len(panels)), squeeze=False)
    sizes = {t: 12 + 10 * i for i, t in enumerate(_ordered(done["chain"]))}
    for (reward, realism), (model, task) in zip(axes, panels):
        for variant, group in done[(done["model"] == model) & (done["task"] == task)].groupby("variant"):
            group = group.sort_values("chain", key=lambda c: c.map(list(sizes).index))
            colour = colours[str(variant)]
            for axis, column in ((reward, "final_reward_mean"), (realism, "final_nn_distance")):
                if column not in group:
                    continue
                axis.plot(group["seconds_per_iter"], group[column], "-", color=colour, alpha=0.4, lw=1)
                axis.scatter(
                    group["seconds_per_iter"], group[column], s=group["chain"].map(sizes), color=colour, label=variant
                )
            if "final_reward_ci95_seeds" in group:
                reward.errorbar(
                    group["seconds_per_iter"],
                    group["final_reward_mean"],
                    yerr=group["final_reward_ci95_seeds"],
                    fmt="none",
                    ecolor=colour,
                    alpha=0.5,
                    lw=1,
                )
        reward.set(
            xscale="log",
            xlabel="seconds per iteration",
            ylabel="final reward (mean over seeds)",
            title=f"{model} · {task}: reward",
        )
        realism.set(
            xscale="log",
            xlabel="seconds per iteration",
            ylabel="distance to real data",
            title=f"{model} · {task}: quality",
        )
        for axis in (reward, realism):
            axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 3, 5)))
            axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            axis.xaxis.set_minor_formatter(ticker.NullFormatter())
            axis.grid(alpha=0.3, which="both")
            axis.title.set_fontsize(9)
    figure.text(0.01, 0.005, "marker size: chain (" + ", ".join(map(str, sizes)) + ")", fontsize=7, color="0.4")
    _save(figure, path, devices_of(done), legend=axes)


def _log_axes(axis, ticks) -> None:
    """Log-log axes labelled with plain numbers, the x ticks at the measured step counts, y ticks
    at 1, 2 and 5 per decade where the data span under two decades, else at each decade."""
    axis.set(xscale="log", yscale="log")
    axis.set_xticks(ticks, labels=ticks)
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    low, high = axis.get_ylim()
    axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5) if high < 100 * low else (1,)))
    axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    axis.grid(alpha=0.3, which="both")


def _line_styles(done: pd.DataFrame):
    """The rows labelled by line, and each line's style: a colour per variant or, where the rows
    ran on several samplers, a colour per sampler and a dash per variant ("variant · sampler")."""
    if "sampler" not in done or done["sampler"].nunique() < 2:
        return done, {v: {"color": c} for v, c in _colours(done["variant"].unique()).items()}
    pairs = done[["variant", "sampler"]].astype(str)
    colours = _colours(pairs["sampler"].unique())
    dashes = {v: ("-", "--", ":", "-.")[i % 4] for i, v in enumerate(sorted(pairs["variant"].unique()))}
    styles = {
        f"{v} · {s}": {"color": colours[s], "linestyle": dashes[v]}
        for v, s in pairs.drop_duplicates().itertuples(index=False)
    }
    return done.assign(variant=pairs["variant"] + " · " + pairs["sampler"]), styles


def _by_kind(frame: pd.DataFrame, rows: list[tuple[str, str, bool]], path: Path | str, title: str) -> None:
    """A grid: one row per (column, label, log-y), one column per parameter type, a line per
    variant (and sampler, where rows ran on several)."""
    done = frame[frame["status"] == "ok"] if "status" in frame else frame
    if done.empty:
        return _empty(path, "finished bench rows")
    done, styles = _line_styles(done)
    kinds = [k for k in ("latent", "cond", "weights") if k in set(done["wrt"])]
    ticks = sorted(done["steps"].unique())
    figure, axes = plt.subplots(len(rows), len(kinds), figsize=(4.2 * len(kinds), 3.0 * len(rows)), squeeze=False)
    for j, kind in enumerate(kinds):
        for variant, group in done[done["wrt"] == kind].groupby("variant"):
            group = group.sort_values("steps")
            for i, (column, _, _) in enumerate(rows):
                if column in group:
                    axes[i][j].plot(
                        group["steps"], group[column], marker="o", ms=3, label=variant, **styles[str(variant)]
                    )
        for i, (_, label, logy) in enumerate(rows):
            axis = axes[i][j]
            _log_axes(axis, ticks)  # plain-number log axes; a set_yscale would reset their labels
            if not logy:
                axis.set_yscale("linear")
            axis.set(xlabel="sampling steps T", ylabel=label, title=f"{title}: {kind}")
    _save(figure, path, devices_of(frame), top=0.92, legend=axes)


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
    frame = fidelity.assign(
        saved_mib=fidelity.get("saved_bytes", np.nan) / 2**20, peak_mib=fidelity.get("peak_bytes", np.nan) / 2**20
    )
    _by_kind(
        frame,
        [
            ("seconds", "seconds per gradient", True),
            ("saved_mib", "autograd MiB (peak)", True),
            ("peak_mib", "peak memory MiB", True),
        ],
        path,
        "cost",
    )


def _strip(images):
    """Images (B, C, H, W) in [-1, 1] side by side as one (H, B*W[, 3]) array in [0, 1]."""
    images = (images.float().clamp(-1, 1) + 1) / 2
    row = images.permute(2, 0, 3, 1).flatten(1, 2).numpy()
    return row[..., 0] if row.shape[-1] == 1 else row


def sample_grids(summary: pd.DataFrame, path: Path | str, per_row: int = 8) -> None:
    """Start against end: for each model and task at its last chain and lowest seed, one row per
    variant, `per_row` samples from the starting parameters (left) and the optimised ones
    (right), the same noise in both."""
    from safetensors.torch import load_file

    if summary.empty or "samples_file" not in summary:
        return _empty(path, "finished runs with samples")
    done = summary[(summary["status"] == "ok") & summary["samples_file"].notna()]
    if done.empty:
        return _empty(path, "finished runs with samples")
    picked = [
        group[group["chain"] == _ordered(group["chain"])[-1]].sort_values("seed").drop_duplicates("variant")
        for _, group in done.groupby(["model", "task"])
    ]
    rows = pd.concat(picked)
    figure, axes = plt.subplots(len(rows), 2, figsize=(2 * per_row * 0.55, 0.75 * len(rows) + 0.6), squeeze=False)
    for (start, end), row in zip(axes, rows.itertuples()):
        tensors = load_file(row.samples_file)
        for axis, key in ((start, "start"), (end, "final")):
            axis.imshow(_strip(tensors[key][:per_row]), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([]), axis.set_yticks([])
        start.set_ylabel(
            f"{row.model}\n{row.task}\n{row.variant}\n{row.chain}", rotation=0, ha="right", va="center", fontsize=7
        )
    axes[0][0].set_title("start (same noise)", fontsize=9)
    axes[0][1].set_title("end", fontsize=9)
    _save(figure, path, devices_of(rows), top=0.97)

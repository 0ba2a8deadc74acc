"""The figures draw from tables with the edge cases a sweep produces: intervals with no lower or
upper limit (censored runs), a reward-hacked row, and no finished runs at all."""

from __future__ import annotations

import math

import matplotlib.image
import pandas as pd

from evals import figures


def _verdict(model, low, high, verdict, hacked=False):
    return {
        "model": model,
        "task": "latent",
        "chain": "T10",
        "peer": "full",
        "peer_chain": "T10",
        "subject": "shortcut",
        "threshold": 0.1,
        "unit": "cost",
        "ratio": 0.4,
        "ratio_low": low,
        "ratio_high": high,
        "verdict": verdict,
        "reward_hacked": hacked,
    }


def _drawn(monkeypatch):
    """Keep the figures `_save` is handed, with what they say, before they are closed."""
    kept = []
    save = figures._save

    def keep(figure, path, devices, top=0.94, legend=None):
        save(figure, path, devices, top, legend)
        kept.append(
            {
                "axes": figure.axes,
                "texts": [t.get_text() for t in figure.texts],
                "legends": [legend.get_window_extent() for legend in figure.legends],
                "legend_columns": [
                    len({round(t.get_window_extent().x0) for t in lg.get_texts()}) for lg in figure.legends
                ],
                "panels": [axis.get_tightbbox() for axis in figure.axes],
            }
        )

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def test_verdicts_draw_open_intervals_inside_the_axes(tmp_path, monkeypatch):
    """Each row is a bar from its lower to its upper limit; a limit that is 0 or infinite runs to
    the axis's edge with an arrow there; the reward-hacked row says so; the device is named."""
    kept = _drawn(monkeypatch)
    table = pd.DataFrame(
        [
            _verdict("a", 0.3, 0.5, "refuted", True),
            _verdict("b", 0.0, 0.5, "inconclusive"),
            _verdict("c", 0.0, math.inf, "inconclusive"),
            _verdict("d", 0.05, 0.08, "holds"),
        ]
    )
    figures.verdicts(table, tmp_path / "verdicts.png", ["cpu"])
    (axis,) = kept[0]["axes"]
    left, right = axis.get_xlim()
    bars = {
        int(round(line.get_ydata()[0])): tuple(line.get_xdata())
        for line in axis.lines
        if len(line.get_xdata()) == 2 and line.get_linewidth() == 3
    }
    assert bars == {3: (0.3, 0.5), 2: (left, 0.5), 1: (left, right), 0: (0.05, 0.08)}  # rows top to bottom
    arrows = sorted(
        (line.get_marker(), int(round(line.get_ydata()[0]))) for line in axis.lines if line.get_marker() in "<>"
    )
    assert arrows == [("<", 1), ("<", 2), (">", 1)]
    assert [t.get_text() for t in axis.texts if t.get_text() == "reward hacked"] == ["reward hacked"]
    assert "device: cpu" in kept[0]["texts"] and matplotlib.image.imread(tmp_path / "verdicts.png").shape[1] > 800


def test_figures_with_nothing_finished_say_so(tmp_path, monkeypatch):
    kept = _drawn(monkeypatch)
    figures.verdicts(pd.DataFrame(), tmp_path / "verdicts.png")
    figures.reward_vs_cost(pd.DataFrame({"status": ["failed"], "cost": [1.0]}), tmp_path / "cost.png")
    said = [text.get_text() for figure in kept for axis in figure["axes"] for text in axis.texts]
    assert said == ["no verdicts: see the tables' status counts", "no finished runs: see the tables' status counts"]


def test_curves_carry_the_caveats_their_estimators_state():
    from sdo.estimators import ESTIMATORS

    rows = pd.DataFrame({"method": ["full", "doodl", "shortcut", None]})
    assert figures._caveats(rows) == [ESTIMATORS["doodl"].caveat] and "EDICT" in ESTIMATORS["doodl"].caveat
    assert figures._caveats(pd.DataFrame({"variant": ["a"]})) == []


def test_the_bench_figures_draw_a_line_per_variant_and_sampler(tmp_path, monkeypatch):
    """Rows of two samplers: each (variant, sampler) is its own labelled line on every panel, a
    colour per sampler and a dash per variant, one panel column per parameter type, T on the x
    axis, the legend above every panel."""
    kept = _drawn(monkeypatch)
    rows = [
        {"status": "ok", "wrt": wrt, "variant": variant, "sampler": sampler, "steps": steps, "device": "cpu"}
        | {"cosine": 0.5, "rel_error": 0.8, "seconds": 0.1 * steps, "saved_bytes": 2.0**20, "peak_bytes": 2.0**21}
        for wrt in ("latent", "cond")
        for variant in ("full", "shortcut")
        for sampler in ("ddim", "dpmpp_2m")
        for steps in (10, 50)
    ]
    figures.fidelity_vs_steps(pd.DataFrame(rows), tmp_path / "fidelity.png")
    figures.bench_cost_vs_steps(pd.DataFrame(rows), tmp_path / "cost.png")
    fidelity, cost = kept
    assert len(fidelity["axes"]) == 2 * 2 and len(cost["axes"]) == 3 * 2  # rows x parameter types
    for axis in fidelity["axes"] + cost["axes"]:
        labels = {line.get_label() for line in axis.get_lines()}
        assert labels == {"full · ddim", "full · dpmpp_2m", "shortcut · ddim", "shortcut · dpmpp_2m"}
        assert sorted({x for line in axis.get_lines() for x in line.get_xdata()}) == [10, 50]
        styles = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in axis.get_lines()}
        assert styles["full · ddim"][0] == styles["shortcut · ddim"][0] != styles["full · dpmpp_2m"][0]
        assert styles["full · ddim"][1] == styles["full · dpmpp_2m"][1] != styles["shortcut · ddim"][1]
    for axis in cost["axes"]:  # log scales labelled with plain numbers, as the x axis is
        assert axis.get_yscale() == "log" and axis.yaxis.get_major_formatter()(2.0, 0) == "2"
    for figure in (fidelity, cost):
        (legend,) = figure["legends"]
        assert legend.y0 >= max(panel.y1 for panel in figure["panels"]) and figure["legend_columns"] == [4]


def test_a_long_legend_stands_beside_the_panels(tmp_path, monkeypatch):
    """Fifteen lines (three variants on five samplers): the legend is right of every panel; a
    log axis over four decades is ticked at each decade only."""
    kept = _drawn(monkeypatch)
    rows = [
        {"status": "ok", "wrt": "latent", "variant": variant, "sampler": sampler, "steps": steps, "cosine": 0.5}
        | {"rel_error": 1e4 if variant == "shortcut" else 1.0, "device": "cpu"}
        for variant in ("full", "shortcut", "shortcut_all")
        for sampler in ("ddim", "dpmpp_2m", "euler_ancestral", "flow_euler", "flow_sde")
        for steps in (10, 50)
    ]
    figures.fidelity_vs_steps(pd.DataFrame(rows), tmp_path / "fidelity.png")
    ((legend,),) = [figure["legends"] for figure in kept]
    assert len({line.get_label() for line in kept[0]["axes"][0].get_lines()}) == 15
    assert legend.x0 >= max(panel.x1 for panel in kept[0]["panels"]) and kept[0]["legend_columns"] == [1]
    low, high = kept[0]["axes"][1].get_ylim()
    shown = [y for y in kept[0]["axes"][1].get_yticks() if low <= y <= high]
    assert shown == [1, 10, 100, 1000, 10000]
    assert matplotlib.image.imread(tmp_path / "fidelity.png").shape[0] > 100

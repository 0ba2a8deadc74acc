"""The figures draw from tables with the edge cases a sweep produces: intervals with no lower or
upper limit (censored runs), a reward-hacked row, and no finished runs at all."""

from __future__ import annotations

import math

import matplotlib.image
import pandas as pd

from evals import figures


def _verdict(model, low, high, verdict, hacked=False):
    return {"model": model, "task": "latent", "chain": "T10", "peer": "full", "peer_chain": "T10", "subject": "shortcut", "threshold": 0.1,
            "unit": "cost", "ratio": 0.4, "ratio_low": low, "ratio_high": high, "verdict": verdict, "reward_hacked": hacked}


def test_verdicts_draw_open_intervals_inside_the_axes(tmp_path):
    table = pd.DataFrame([_verdict("a", 0.3, 0.5, "refuted", True), _verdict("b", 0.0, 0.5, "inconclusive"),
                          _verdict("c", 0.0, math.inf, "inconclusive"), _verdict("d", 0.05, 0.08, "holds")])
    figures.verdicts(table, tmp_path / "verdicts.png", ["cpu"])
    image = matplotlib.image.imread(tmp_path / "verdicts.png")
    assert image.shape[0] > 200 and image.shape[1] > 800


def test_figures_with_nothing_finished_say_so(tmp_path):
    figures.verdicts(pd.DataFrame(), tmp_path / "verdicts.png")
    figures.reward_vs_cost(pd.DataFrame({"status": ["failed"], "cost": [1.0]}), tmp_path / "cost.png")
    assert (tmp_path / "verdicts.png").stat().st_size > 0 and (tmp_path / "cost.png").stat().st_size > 0

"""A cost plan before a big sweep, from the config files alone, without the weights: the paper's
protocols get runs, iterations, exact network evaluations per iteration and a device-hours
estimate marked as one; a model with no published architecture says why it has none."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evals.cli import main
from evals.plan import plan, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_rows(tmp_path_factory):
    """The paper configuration's plan without profile rows, at 400 TFLOP/s (shared: each plan
    counts the published architectures' FLOPs)."""
    return plan([ROOT / "config" / "paper.yaml"], profile_rows=tmp_path_factory.mktemp("none"), throughput=400.0)


def test_the_paper_config_plans_without_its_weights(paper_rows):
    rows = paper_rows
    by = {(r["experiment"], r["variant"]): r for r in rows}
    assert {r["experiment"] for r in rows} == {"style", "aesthetic", "clip_guide"}
    style, whole = by["style", "shortcut"], by["style", "full_whole_chain"]
    assert (style["forward_per_iteration"], style["backward_per_iteration"]) == (5, 1)  # the last 5 of 50 steps
    assert (whole["forward_per_iteration"], whole["backward_per_iteration"]) == (50, 50)
    assert (by["aesthetic", "full"]["forward_per_iteration"], by["aesthetic", "full"]["backward_per_iteration"]) == (
        40,
        40,
    )
    assert style["runs"] == 8 and style["iterations"] == 8 * 200
    assert 0 < style["device_hours"] < whole["device_hours"] and "FLOPs at 400 TFLOP/s" in style["estimate"]
    guide = by["clip_guide", "full"]
    assert math.isnan(guide["device_hours"]) and guide["estimate"].startswith("no estimate: no published architecture")


def test_sdo_plan_prints_an_estimate(tmp_path, capsys):
    assert (
        main(
            [
                "plan",
                "--configfile",
                str(ROOT / "config" / "paper.yaml"),
                "--throughput",
                "200",
                "--out",
                str(tmp_path / "plan.csv"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "ESTIMATE: 104 runs" in printed and "device-hours in all (+ 4 rules with no estimate)" in printed
    assert (tmp_path / "plan.csv").read_text().startswith("experiment,chain,variant,model")


def test_a_plan_with_no_estimate_says_so_rather_than_zero(tmp_path):
    rows = plan([ROOT / "config" / "quick.yaml"], profile_rows=tmp_path / "none", throughput=400.0)
    assert rows and all(math.isnan(r["device_hours"]) for r in rows)
    printed = render(rows)
    assert "no device-hours estimate" in printed and "0 device-hours" not in printed


def test_measured_profile_rows_set_the_estimate_over_flops(tmp_path, paper_rows):
    """A `sdo profile` row of the same model: seconds per forward pass (a backward counted as
    BACKWARD forwards) scaled to the run's batch, times the run's passes; its peak in GB."""
    from evals.plan import BACKWARD

    config = [ROOT / "config" / "paper.yaml"]
    style = next(r for r in paper_rows if r["experiment"] == "style")
    rows = tmp_path / "profile" / "any" / "place"
    rows.mkdir(parents=True)
    measured_row = {"status": "ok", "config": {"model": style["model"]}, "method": "full", "batch": 2}
    measured_row |= {"nfe_forward": 10, "nfe_backward": 10, "seconds": 6.0, "peak_bytes": 3e9}
    (rows / "row.json").write_text(json.dumps(measured_row))
    (rows / "other.json").write_text(json.dumps({**measured_row, "config": {"model": "elsewhere"}, "seconds": 1e6}))
    again = {(r["experiment"], r["variant"]): r for r in plan(config, profile_rows=tmp_path / "profile")}
    row = again["style", style["variant"]]
    per_pass = 6.0 / (10 + BACKWARD * 10) * 1 / 2  # the protocol's batch is 1, the row's 2
    assert row["estimate"] == "measured profile rows" and row["peak_gb"] == 3.0
    assert math.isclose(row["device_hours"], row["forward_passes"] * per_pass / 3600, rel_tol=1e-12)

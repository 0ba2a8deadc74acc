"""The trained embedded models, the CLI's records and the workflow's validity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evals.cli import main
from evals.measure import bench_problem
from evals.rewards.digits import ClassifierLogProb
from sdo import make_estimator
from sdo.models import store

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_FIELDS = {"device", "physical_device", "python", "versions", "commit"}
RUN_FIELDS = {"variant", "config", "iterations", "final", "status"} | ENVIRONMENT_FIELDS
ITERATION_FIELDS = {"iter", "loss", "reward", "seconds", "nfe_forward", "nfe_backward"}
FINAL_FIELDS = {"reward_mean", "reward_ci95", "target_accuracy", "fid", "fid_note", "samples", "nn_distance", "drift"}


def test_the_committed_classifier_meets_its_bar():
    """Measured now on the held-out digits, not read from its JSON."""
    from sdo.models.data import load_split

    images, labels = load_split("held_out")
    with torch.no_grad():
        accuracy = float((store.load("classifier")(images).argmax(1) == labels).float().mean())
    assert accuracy >= 0.95 and accuracy == pytest.approx(store.metrics("classifier")["held_out_accuracy"], abs=1e-6)


@pytest.mark.parametrize("source", ["embedded", "embedded-flow"])
def test_the_shortcut_s_network_term_moves_it_towards_full_on_the_trained_models(source):
    """On the trained models (latent, T = 10) the shortcut's gradient, the affine skip plus the
    first step's network term, lies closer to full backpropagation's than the skip alone does."""
    from sdo.models import load_model

    model, classifier = load_model(source), store.load("classifier")
    problem, loss = bench_problem(model, ClassifierLogProb(classifier, 3), "latent", steps=10, batch=8, seed=0)
    full = make_estimator("full")(problem, loss).grads[0].flatten()
    estimate = make_estimator("shortcut")(problem, loss)
    sample = estimate.sample.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(sample), sample)
    skip = (g * problem.chain.influence()[0] * problem.chain.initial_scale).flatten()
    cosine = lambda a: float(torch.nn.functional.cosine_similarity(a, full, dim=0))  # noqa: E731
    assert cosine(estimate.grads[0].flatten()) > cosine(skip) > 0.5


def test_run_writes_a_complete_record(tmp_path):
    out = tmp_path / "run.json"
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--task",
            "latent",
            "--method",
            "shortcut",
            "--steps",
            "3",
            "--iters",
            "2",
            "--batch",
            "4",
            "--seed",
            "1",
            "--variant",
            "sdo_first",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert code == 0 and record["variant"] == "sdo_first"
    assert RUN_FIELDS <= set(record) and record["status"] == "ok"
    assert len(record["iterations"]) == 2
    assert all(ITERATION_FIELDS <= set(row) for row in record["iterations"])
    assert FINAL_FIELDS <= set(record["final"]) and record["final"]["samples"] == 4
    assert record["final"]["fid"] is None and "4 samples < 100" in record["final"]["fid_note"]
    assert [row["iter"] for row in record["evaluations"]] == [0, 2]
    assert {"reward", "nn_distance", "target_accuracy", "seconds", "nfe"} <= set(record["evaluations"][-1])
    assert record["iterations"][0]["nfe_forward"] == 3 and record["iterations"][0]["nfe_backward"] == 1
    assert record["saved_bytes"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


def _without_timings(value):
    """The record with every timing removed (they differ between runs)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds",)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_same_seed_same_record(tmp_path):
    records = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        torch.rand(3)  # the global RNG moves between the runs
        assert (
            main(
                [
                    "run",
                    "--task",
                    "conditioning",
                    "--method",
                    "full",
                    "--steps",
                    "2",
                    "--iters",
                    "2",
                    "--batch",
                    "2",
                    "--task-option",
                    "eval_samples=6",
                    "--seed",
                    "5",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        records.append(json.loads(out.read_text()))
    a, b = (_without_timings(r) for r in records)
    for record in (a, b):
        record["config"].pop("out"), record.pop("samples_file")
    assert a == b
    assert a["final"]["kid"] is None and a["final"]["nn_distance"] > 0 and len(a["evaluations"]) == 2


@pytest.mark.slow
def test_several_seeds_in_one_process(tmp_path):
    """`--seed 5 6` writes one record per seed, each the record its seed gives alone (LoRA
    adapters and noise included); several seeds need {seed} in --out."""
    flags = [
        "run",
        "--task",
        "finetune",
        "--method",
        "shortcut",
        "--steps",
        "2",
        "--iters",
        "2",
        "--batch",
        "2",
        "--task-option",
        "eval_samples=4",
        "--task-option",
        "monitor_samples=2",
    ]
    assert main(flags + ["--seed", "5", "6", "--out", str(tmp_path / "seed{seed}.json")]) == 0
    assert main(flags + ["--seed", "6", "--out", str(tmp_path / "alone.json")]) == 0
    together, alone = (
        _without_timings(json.loads((tmp_path / name).read_text())) for name in ("seed6.json", "alone.json")
    )
    for record in (together, alone):
        record["config"].pop("out"), record.pop("samples_file")
    assert together == alone and together["config"]["seed"] == 6
    assert json.loads((tmp_path / "seed5.json").read_text())["config"]["seed"] == 5
    with pytest.raises(SystemExit) as usage:
        main(flags + ["--seed", "5", "6", "--out", str(tmp_path / "one.json")])
    assert usage.value.code == 2


def test_inapplicable_pair_is_a_row_with_its_status(tmp_path, capsys):
    out = tmp_path / "run.json"
    flags = [
        "run",
        "--method",
        "truncated",
        "--option",
        "tail=1",
        "--steps",
        "3",
        "--iters",
        "1",
        "--batch",
        "2",
        "--out",
        str(out),
    ]
    assert main(flags) == 1
    record = json.loads(out.read_text())
    assert record["status"] == "not_applicable" and "initial latent" in record["reason"]
    assert ENVIRONMENT_FIELDS <= set(record)
    assert not out.with_suffix(".png").exists()
    assert "not_applicable" in capsys.readouterr().err
    assert main(flags + ["--sweep"]) == 0  # inside a sweep the row is the result


def test_bad_estimator_option_exits_non_zero_with_one_line(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        ["run", "--method", "shortcut", "--option", "at=middle", "--steps", "2", "--iters", "1", "--out", str(out)]
    )
    record = json.loads(out.read_text())
    assert code == 1 and record["status"] == "failed" and "middle" in record["reason"]
    error = capsys.readouterr().err
    assert "middle" in error and "Traceback" not in error


def test_bench_row_compares_with_the_reference(tmp_path):
    reference = tmp_path / "full.safetensors"
    common = ["bench", "--wrt", "cond", "--steps", "3", "--batch", "2", "--rounds", "1"]
    assert (
        main(common + ["--method", "full", "--save-gradient", str(reference), "--out", str(tmp_path / "full.json")])
        == 0
    )
    assert (
        main(
            common
            + [
                "--method",
                "full",
                "--option",
                "checkpoint=true",
                "--variant",
                "full_checkpoint",
                "--exact-gradient",
                str(reference),
                "--out",
                str(tmp_path / "ck.json"),
            ]
        )
        == 0
    )
    row = json.loads((tmp_path / "ck.json").read_text())
    assert row["status"] == "ok" and row["cosine"] == pytest.approx(1, abs=1e-6) and row["rel_error"] < 1e-5
    assert row["nfe_forward"] == 6 and row["depth"] == 9 and row["peak_bytes"] > 0
    assert row["variant"] == "full_checkpoint" and ENVIRONMENT_FIELDS <= set(row)

"""The trained embedded models, the CLI's records and the workflow's validity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evals.bench import bench_problem
from sdo import make_estimator
from sdo.cli import main
from sdo.models import store

ROOT = Path(__file__).resolve().parents[1]
RUN_FIELDS = {"config", "device", "iterations", "final", "status", "versions", "commit"}
ITERATION_FIELDS = {"iter", "loss", "reward", "seconds", "nfe_forward", "nfe_backward", "saved_bytes"}
FINAL_FIELDS = {"reward_mean", "reward_ci95", "target_accuracy", "fid", "fid_samples"}


def test_trained_models_meet_their_bars():
    assert store.metrics("classifier")["held_out_accuracy"] >= 0.95


def test_shortcut_points_along_full_on_the_trained_model():
    net, classifier = store.load("denoiser"), store.load("classifier")
    problem, loss = bench_problem(net, classifier, "latent", steps=10, batch=8, seed=0)
    full = make_estimator("full")(problem, loss).grads[0].flatten()
    shortcut = make_estimator("shortcut")(problem, loss).grads[0].flatten()
    cosine = float(torch.nn.functional.cosine_similarity(full, shortcut, dim=0))
    print(f"cosine(shortcut, full) on the trained model, latent, T=10: {cosine:.4f}")
    assert cosine > 0


def test_run_writes_a_complete_record(tmp_path):
    out = tmp_path / "run.json"
    main(["--threads", "1", "run", "--task", "latent", "--method", "shortcut", "--steps", "3", "--iters", "2",
          "--batch", "4", "--seed", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert RUN_FIELDS <= set(record) and record["status"] == "ok"
    assert len(record["iterations"]) == 2
    assert all(ITERATION_FIELDS <= set(row) for row in record["iterations"])
    assert FINAL_FIELDS <= set(record["final"]) and record["final"]["fid_samples"] == 4
    assert record["iterations"][0]["nfe_forward"] == 4 and record["iterations"][0]["nfe_backward"] == 1
    assert out.with_suffix(".png").stat().st_size > 0


def test_same_seed_same_record_numbers(tmp_path):
    rewards = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        main(["run", "--method", "full", "--steps", "2", "--iters", "2", "--batch", "2", "--seed", "5", "--out", str(out)])
        rewards.append([row["reward"] for row in json.loads(out.read_text())["iterations"]])
    assert rewards[0] == rewards[1]


def test_inapplicable_pair_is_a_row_with_its_status(tmp_path):
    out = tmp_path / "run.json"
    main(["run", "--method", "truncated", "--option", "k=1", "--steps", "3", "--iters", "1", "--batch", "2", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["status"] == "not_applicable" and "initial latent" in record["reason"]
    assert not out.with_suffix(".png").exists()


def test_bad_estimator_option_is_named(tmp_path):
    out = tmp_path / "run.json"
    main(["run", "--method", "shortcut", "--option", "steps=middle", "--steps", "2", "--iters", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and "middle" in record["reason"]


def test_bench_row_compares_with_the_reference(tmp_path):
    reference = tmp_path / "full.safetensors"
    common = ["bench", "--wrt", "cond", "--steps", "3", "--batch", "2", "--repeats", "1"]
    main(common + ["--method", "full", "--save-gradient", str(reference), "--out", str(tmp_path / "full.json")])
    main(common + ["--method", "full", "--option", "checkpoint=true", "--reference", str(reference), "--out", str(tmp_path / "ck.json")])
    row = json.loads((tmp_path / "ck.json").read_text())
    assert row["status"] == "ok" and row["cosine"] == pytest.approx(1, abs=1e-6) and row["rel_error"] < 1e-5
    assert row["nfe_forward"] == 6 and row["depth"] == 9 and row["peak_bytes"] > 0


def _snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_workflow_dry_run_and_lint():
    dry = _snakemake("-n", "--quiet")
    assert dry.returncode == 0, dry.stderr[-2000:]
    bench = _snakemake("bench", "-n", "--quiet")
    assert bench.returncode == 0, bench.stderr[-2000:]
    lint = _snakemake("--lint")
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-3000:]

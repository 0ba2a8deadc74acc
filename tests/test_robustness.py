"""What a user meets when things go wrong: sweeps where every run fails or diverges still write
their tables; a failure reruns, once fixed, without touching the other records; a memory
budget ends a run that would not fit, quickly, with a record; and the smaller promises (a record
for an absent device, strict JSON, readable weights)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evals.cli import main
from evals.rerun import stage_failed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _tiny(reward: str, **latent) -> dict:
    """One task, one model, one variant, two seeds, T = 2: the smallest sweep with every table."""
    return {
        "weights": str(ROOT / "results" / "models"),
        "tasks": ["latent"], "models": ["embedded"], "variants": ["full"],
        "quality": {"models": [], "steps": 2, "cfg_scales": [1.0], "per_label": 8},
        "statistics": {"resamples": 200, "backward_rounds": 1},
        "guidance": None,
        "runs": {"seeds": [0, 1], "tasks": {"latent": {"steps": [2], "iters": 2, "batch": 2, "reward": reward,
                                                          "reward_options": {}, "audit_every": 0, **latent}}},
    }


def _sweep(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--configfile", str(workdir / "tiny.yaml"), "--set-threads", "backward_cost=1", *args]  # nothing here is timed
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)


def _summary(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / "tables" / "summary.csv")


def test_a_sweep_where_every_run_fails_writes_its_tables_and_reruns_once_fixed(tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def score(images):\n    raise ValueError('the reward is broken')\n")
    done = _sweep(tmp_path, _tiny(f"{reward}:score"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(tmp_path)
    assert list(summary["status"]) == ["failed", "failed"] and summary["reason"].str.contains("the reward is broken").all()
    for name in ("verdicts", "cost_to_quality", "methods", "evaluations", "audits", "runs"):
        assert (tmp_path / "results" / "tables" / f"{name}.csv").exists(), name
    log = (tmp_path / "results" / "logs" / "runs_table.log").read_text().strip().splitlines()
    assert "2 runs by status: diverged 0, failed 2, invalid_start 0, not_applicable 0, ok 0, out_of_memory 0" in log[-1]
    assert (tmp_path / "results" / "figures" / "verdicts.png").stat().st_size > 0

    reward.write_text("def score(images):\n    return images.mean(dim=(1, 2, 3))\n")
    again = _sweep(tmp_path, _tiny(f"{reward}:score"))
    assert "Nothing to be done" in again.stdout + again.stderr  # a failed record is a record...
    rerun = _sweep(tmp_path, _tiny(f"{reward}:score"), "--config", "rerun_failed=true")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert list(_summary(tmp_path)["status"]) == ["ok", "ok"]  # ...until asked to rerun it
    assert len(list((tmp_path / "results" / "retry" / "failed").rglob("seed*.json"))) == 2  # kept for reference


def test_a_sweep_where_every_run_diverges_writes_its_tables_and_keeps_its_evaluations(tmp_path):
    reward = tmp_path / "steep.py"
    reward.write_text("def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n")
    done = _sweep(tmp_path, _tiny(f"{reward}:steep", lr=1e30, reward_tolerance=1.0))
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(_summary(tmp_path)["status"]) == ["diverged", "diverged"]
    evaluations = pd.read_csv(tmp_path / "results" / "tables" / "evaluations.csv")
    assert len(evaluations) >= 2 and set(evaluations["status"]) == {"diverged"}
    rerun = _sweep(tmp_path, _tiny(f"{reward}:steep", lr=1e30, reward_tolerance=1.0), "--config", "rerun_failed=true")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr  # a diverged run is a result


def test_a_rerun_moves_kept_records_back_untouched(tmp_path):
    """A job with one ok and one failed seed: staging moves both aside; the rerun moves the ok
    record back, the same file, and runs only the failed seed."""
    job = tmp_path / "results" / "runs" / "embedded" / "latent" / "shortcut" / "T2"
    flags = ["run", "--task", "latent", "--method", "shortcut", "--variant", "shortcut", "--steps", "2", "--iters", "1",
             "--batch", "2", "--device", "cpu", "--sweep"]
    assert main(flags + ["--seed", "0", "1", "--out", str(job / "seed{seed}.json")]) == 0
    failed = json.loads((job / "seed1.json").read_text())
    failed.update(status="failed", reason="ValueError: broken")
    (job / "seed1.json").write_text(json.dumps(failed))
    kept = (job / "seed0.json").read_text()
    inode = (job / "seed0.json").stat().st_ino
    records = [str((job / f"seed{s}.json").relative_to(tmp_path)) for s in (0, 1)]
    assert stage_failed([records], root=tmp_path) == 1
    assert not (job / "seed0.json").exists() and not (job / "seed1.json").exists()
    reuse = tmp_path / "results" / "retry" / "runs" / "embedded" / "latent" / "shortcut" / "T2"
    assert main(flags + ["--seed", "0", "1", "--reuse", str(reuse), "--out", str(job / "seed{seed}.json")]) == 0
    assert (job / "seed0.json").read_text() == kept and (job / "seed0.json").stat().st_ino == inode
    assert json.loads((job / "seed1.json").read_text())["status"] == "ok"


def test_a_run_past_its_memory_budget_ends_quickly_with_a_record(tmp_path):
    """The prediction from batches 1 and 2 refuses a gradient that would not fit, in seconds."""
    out = tmp_path / "big.json"
    start = time.perf_counter()
    code = main(["--threads", "1", "run", "--task", "latent", "--method", "full", "--steps", "4", "--iters", "2",
                 "--batch", "20000", "--mem-mb", "2500", "--device", "cpu", "--out", str(out)])
    seconds = time.perf_counter() - start
    record = json.loads(out.read_text())
    assert code == 1 and record["status"] == "out_of_memory" and "budget of 2500 MiB" in record["reason"]
    assert seconds < 60, seconds


def test_an_allocation_past_the_budget_fails_at_once(tmp_path):
    """Beyond the prediction, the budget is a limit the allocator meets: a metric that asks for
    4 GiB under a 2.5 GiB budget ends the run as out_of_memory instead of swelling."""
    greedy = tmp_path / "greedy.py"
    greedy.write_text("import torch\n\ndef hog(images):\n    block = torch.ones(2**30)\n    return images.mean(dim=(1, 2, 3)) + block[0]\n")
    out = tmp_path / "greedy.json"
    code = main(["--threads", "1", "run", "--method", "shortcut", "--steps", "2", "--iters", "1", "--batch", "2",
                 "--metric", f"{greedy}:hog", "--mem-mb", "2500", "--device", "cpu", "--out", str(out)])
    record = json.loads(out.read_text())
    assert code == 1 and record["status"] == "out_of_memory", record.get("reason")
    assert len(record["iterations"]) == 1  # the run's iterations are kept


def test_an_absent_device_still_writes_a_record(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "cuda.json"
    assert main(["run", "--method", "full", "--steps", "2", "--iters", "1", "--device", "cuda", "--out", str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and "CUDA is not available" in record["reason"]


def test_records_are_strict_json_and_diverged_ones_keep_evaluations(tmp_path):
    helpers = tmp_path / "helpers.py"
    helpers.write_text(
        "def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n\n"
        "def undefined(images):\n    return images.mean(dim=(1, 2, 3)) * float('nan')\n"
    )

    def refuse(constant):
        raise ValueError(f"bare {constant} in a record")

    out = tmp_path / "diverged.json"
    main(["--threads", "1", "run", "--method", "full", "--steps", "2", "--iters", "3", "--batch", "2", "--eval-every", "1",
          "--reward", f"{helpers}:steep", "--lr", "1e30", "--reward-tolerance", "1", "--out", str(out)])
    record = json.loads(out.read_text(), parse_constant=refuse)
    assert record["status"] == "diverged" and len(record["iterations"]) == 1 and len(record["evaluations"]) == 1
    out = tmp_path / "nan.json"
    assert main(["--threads", "1", "run", "--method", "shortcut", "--steps", "2", "--iters", "1", "--batch", "2",
                 "--metric", f"{helpers}:undefined", "--out", str(out)]) == 0
    record = json.loads(out.read_text(), parse_constant=refuse)
    assert record["final"][f"metric:{helpers}:undefined"] is None  # NaN, written as null


def test_task_options_are_the_tasks_own(tmp_path):
    out = tmp_path / "run.json"
    code = main(["run", "--task", "latent", "--method", "full", "--steps", "2", "--iters", "1",
                 "--task-option", "monitor_samples=2", "--out", str(out)])
    record = json.loads(out.read_text())
    assert code == 1 and "unknown option 'monitor_samples' for task 'latent'" in record["reason"]


def test_weights_are_written_readable_whatever_the_umask(tmp_path):
    from sdo.models import store

    classifier = store.load("classifier")
    previous = os.umask(0o077)
    try:
        path = store.save(classifier, "classifier", tmp_path)
    finally:
        os.umask(previous)
    for written in (path, tmp_path / "classifier.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644


def test_a_selection_runs_only_what_it_names():
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "tasks=[latent]", "models=[embedded-flow]",
                           "variants=[shortcut]"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = [line.split("/") for line in done.stdout.split() if line.startswith("results/runs/")]
    assert planned and {(p[2], p[3], p[4]) for p in planned} == {("embedded-flow", "latent", "shortcut")}

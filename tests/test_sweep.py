"""The sweep end to end on a tiny configuration: killed and resumed it gives the tables an
uninterrupted sweep gives; the report builds; the SLURM profile plans."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASK = {"steps": [2], "iters": 2, "eval_every": 1, "batch": 2, "audit_every": 1}
# Layered over config/config.yaml as a --configfile: selections pick what runs; task blocks
# merge key by key (their option blocks are replaced whole).
TINY = {
    "weights": str(ROOT / "results" / "models"),
    "threads_per_run": 1,
    "tasks": ["latent", "finetune"],
    "models": ["embedded"],
    "variants": ["full", "shortcut"],
    "quality": {"models": ["embedded"], "steps": 2, "cfg_scales": [1.0], "per_label": 8, "threads": 1},
    "statistics": {"resamples": 200, "backward_rounds": 2},
    "guidance": {"repeats": [1]},
    "runs": {
        "seeds": [0, 1],
        "tasks": {
            "latent": TASK,
            "finetune": {**TASK, "task_options": {"eval_samples": 4, "monitor_samples": 2}},
        },
    },
}
# Jobs call `python -m evals.cli`: the python of this environment, as `make` puts it on PATH.
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
RUNS = 4  # run jobs: two tasks x two variants x one T, each with its seeds
RUN_RULE = "run_(?:latent|finetune)"
TABLES = ["summary.csv", "methods.csv", "evaluations.csv", "cost_to_quality.csv", "verdicts.csv"]
UNTIMED = ("--set-threads", "backward_cost=1")  # a tiny sweep judges nothing: its weight job need not run alone
VARYING = ("seconds", "record", "samples_file", "cost", "ratio", "_vs_", "backward_weight", "verdict", "audit_seconds")


def _snakemake(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--configfile", str(workdir / "tiny.yaml"), *UNTIMED, *args]


def _sweep(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_snakemake(workdir, "--cores", "2", *args), capture_output=True, text=True, timeout=600, env=ENV)


def _tables(workdir: Path) -> dict[str, pd.DataFrame]:
    """The tables without the columns that hold timings or paths."""
    frames = {}
    for name in TABLES:
        frame = pd.read_csv(workdir / "results" / "tables" / name)
        frames[name] = frame[[c for c in frame.columns if not any(part in c for part in VARYING)]]
    return frames


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = _sweep(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_a_killed_sweep_resumes_to_the_same_tables(uninterrupted, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    log = tmp_path / "first.log"
    with log.open("w") as output:
        sweep = subprocess.Popen(_snakemake(tmp_path, "--cores", "2"), stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=ENV)
        deadline = time.time() + 300
        while time.time() < deadline and not re.search(rf"\(Rule: {RUN_RULE}\)", log.read_text()):
            time.sleep(0.2)
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    completed = len(re.findall(rf"\(Rule: {RUN_RULE}\)", log.read_text()))
    assert 0 < completed < RUNS, f"the kill should land mid-sweep, {completed} of {RUNS} runs had finished"
    assert not (tmp_path / "results" / "tables" / "summary.csv").exists()
    assert _sweep(tmp_path, "--unlock").returncode == 0
    resumed = _sweep(tmp_path, "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rerun = re.findall(rf"^{RUN_RULE}\s+(\d+)$", resumed.stdout + resumed.stderr, re.MULTILINE)
    assert sum(map(int, rerun)) == RUNS - completed, "only the runs that had not finished run again"
    ours, theirs = _tables(tmp_path), _tables(uninterrupted)
    for name in TABLES:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=False, rtol=1e-9, obj=name)


def test_the_report_builds(uninterrupted):
    """The README's `snakemake --report results/report.html`, without --cores, on the tiny sweep."""
    done = subprocess.run(_snakemake(uninterrupted, "--report", "results/report.html"), capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=uninterrupted)
    (uninterrupted / "report.html").write_bytes((uninterrupted / "results" / "report.html").read_bytes())
    assert done.returncode == 0, done.stderr[-3000:]
    html = (uninterrupted / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "cost_to_quality.csv" in html and "reward_vs_seconds.png" in html
    assert "verdicts.csv" in html and "shortcut &lt;= 0.1 x full" in html  # the first page shows the verdicts


def test_the_slurm_profile_plans_the_jobs_and_names_only_rules_the_workflow_has():
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "config/profiles/slurm"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^run_latent\s+\d+$", done.stdout, re.MULTILINE) and "This was a dry-run" in done.stdout + done.stderr
    rules = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300).stdout.split()
    profile = yaml.safe_load((ROOT / "config" / "profiles" / "slurm" / "config.yaml").read_text())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    assert named and named <= set(rules), f"the profile names rules the workflow lacks: {sorted(named - set(rules))}"

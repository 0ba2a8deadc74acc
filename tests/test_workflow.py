"""The workflow end to end on tiny configurations (the full tier): one shared sweep with a
whole and a partial chain builds every table, resumes after a kill to the same tables, and
builds a report that opens on the verdicts; a sweep whose runs fail and diverge says so,
plans a rerun without touching anything, and reruns only the failures; odd paths and values
reach the jobs quoted; the SLURM profile and the lint pass."""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Jobs call `python -m evals.cli`: the python of this environment, as `make` puts it on PATH.
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
TASK = {"steps": [2], "chains": [], "iters": 2, "eval_every": 1, "batch": 2, "audit_every": 1}
# Layered over config/config.yaml as a --configfile: selections pick what runs; task blocks
# merge key by key (their option blocks are replaced whole).
TINY = {
    "weights": str(ROOT / "results" / "models"),
    "threads_per_run": 1,
    "tasks": ["latent", "finetune"],
    "models": ["embedded"],
    "variants": ["full", "shortcut", "full_whole_chain"],
    "quality": {"models": ["embedded"], "steps": 2, "cfg_scales": [1.0], "per_label": 8, "threads": 1},
    "statistics": {"resamples": 200, "backward_rounds": 2},
    "guidance": {"repeats": [1]},
    "runs": {
        "seeds": [0, 1],
        "variants": {"full_whole_chain": {"method": "full", "whole_chain": True}},
        "tasks": {
            "latent": {
                **TASK,
                "chains": [{"steps": 4, "start_step": 2, "variants": ["full", "shortcut", "full_whole_chain"]}],
            },
            "finetune": {**TASK, "task_options": {"eval_samples": 4, "monitor_samples": 2}},
        },
    },
}
RUNS = 7  # run jobs: latent T2 (2 variants), latent T4-from2 (3), finetune T2 (2), each with its seeds
RUN_RULE = "run_(?:latent|finetune)_T\\w+"
TABLES = ["summary.csv", "methods.csv", "evaluations.csv", "cost_to_quality.csv", "verdicts.csv"]
UNTIMED = ("--set-threads", "backward_cost=1")  # a tiny sweep judges nothing: its weight job need not run alone
VARYING = ("seconds", "record", "samples_file", "cost", "ratio", "_vs_", "weight", "verdict", "audit_seconds")


def snakemake(workdir: Path, *args: str, checkout: Path = ROOT, configfile: str = "tiny.yaml") -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(checkout / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / configfile),
        *UNTIMED,
        *args,
    ]


def sweep(workdir: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake(workdir, "--cores", "2", *args, **options), capture_output=True, text=True, timeout=900, env=ENV
    )


def tables(workdir: Path) -> dict[str, pd.DataFrame]:
    """The tables without the columns that hold timings or paths."""
    frames = {}
    for name in TABLES:
        frame = pd.read_csv(workdir / "results" / "tables" / name)
        frames[name] = frame[[c for c in frame.columns if not any(part in c for part in VARYING)]]
    return frames


def checksum(root: Path) -> str:
    """One digest of every file under `root` (paths, contents, modes) but Snakemake's own."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + oct(path.stat().st_mode).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """The shared tiny sweep, run once."""
    workdir = tmp_path_factory.mktemp("tiny_sweep")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = sweep(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_the_sweep_judges_each_chain_and_names_the_chains_each_side_ran(tiny_sweep):
    verdicts = pd.read_csv(tiny_sweep / "results" / "tables" / "verdicts.csv")
    peers = {(r.chain, r.peer): (r.subject_chain, r.peer_chain, r.warmup_counted) for r in verdicts.itertuples()}
    assert peers[("T4-from2", "full")] == ("T4-from2", "T4-from2", False)
    assert peers[("T4-from2", "full_whole_chain")] == ("T4-from2", "T4", True)
    assert set(verdicts["threshold"]) == {0.1, 1.0} and set(verdicts["task"]) == {"latent", "finetune"}
    chains = verdicts.drop_duplicates("chain").set_index("chain")[["sampler", "start_step", "init"]]
    assert chains.loc["T4-from2"].tolist() == ["ddim", 2, "sample"]
    assert chains.loc["T2"].tolist() == ["ddim", 0, "sample"]
    summary = pd.read_csv(tiny_sweep / "results" / "tables" / "summary.csv")
    assert set(summary["status"]) == {"ok"} and set(summary["sampler"]) == {"ddim"}
    partial = summary[(summary["chain"] == "T4-from2") & (summary["variant"] != "full_whole_chain")]
    assert (partial["warmup_cost"] == 2).all() and (
        summary.loc[summary["variant"] == "full_whole_chain", "warmup_cost"] == 0
    ).all()
    iterations = pd.read_csv(tiny_sweep / "results" / "tables" / "runs.csv")
    shortcut = iterations[(iterations["chain"] == "T4-from2") & (iterations["variant"] == "shortcut")]
    assert set(zip(shortcut["nfe_forward"], shortcut["nfe_backward"])) == {(2, 1)}  # the remaining 2 steps, 1 backward


def test_a_killed_sweep_resumes_to_the_same_tables(tiny_sweep, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    log = tmp_path / "first.log"
    with log.open("w") as output:
        running = subprocess.Popen(
            snakemake(tmp_path, "--cores", "2"),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=ENV,
        )
        deadline = time.time() + 300
        while time.time() < deadline and not re.search(rf"\(Rule: {RUN_RULE}\)", log.read_text()):
            time.sleep(0.2)
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    completed = len(re.findall(rf"\(Rule: {RUN_RULE}\)", log.read_text()))
    assert 0 < completed < RUNS, f"the kill should land mid-sweep, {completed} of {RUNS} runs had finished"
    assert not (tmp_path / "results" / "tables" / "summary.csv").exists()
    assert sweep(tmp_path, "--unlock").returncode == 0
    resumed = sweep(tmp_path, "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rerun = re.findall(rf"^{RUN_RULE}\s+(\d+)$", resumed.stdout + resumed.stderr, re.MULTILINE)
    assert sum(map(int, rerun)) == RUNS - completed, "only the runs that had not finished run again"
    ours, theirs = tables(tmp_path), tables(tiny_sweep)
    for name in TABLES:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=False, rtol=1e-9, obj=name)


def verdict_rows(page: str) -> list[dict[str, str]]:
    """The rows of the verdicts table in the report's caption of verdicts.csv (HTML held in the
    report's JSON), each a mapping of column header to cell text."""
    start = page.index('"results/tables/verdicts.csv": {')
    caption = page[start : page.index('"data_uri"', start)].replace("\\n", "\n").replace('\\"', '"')
    table = re.search(r"<table.*?</table>", caption, re.DOTALL).group(0)

    def text(cell: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()

    headers = [text(cell) for cell in re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table, re.DOTALL)]
    rows = [
        re.findall(r"<td(?:\s[^>]*)?>(.*?)</td>", row, re.DOTALL)
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)
    ]
    return [dict(zip(headers, map(text, cells), strict=True)) for cells in rows if cells]


def test_the_report_opens_on_the_verdicts_without_errors(tiny_sweep):
    """The README's `snakemake --report results/report.html` (no --cores): no docutils error box
    or message, the landing text short and the verdicts table under its first section, a row for
    each verdict, both claims (ratio <= 0.1 and <= 1) for each subject and peer."""
    done = subprocess.run(
        snakemake(tiny_sweep, "--report", "results/report.html"),
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
        cwd=tiny_sweep,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not re.search(r"\((?:ERROR|SEVERE)/[34]\)", done.stderr), done.stderr[-3000:]
    page = (tiny_sweep / "results" / "report.html").read_text(errors="replace")
    assert "System Message" not in page and "Unknown target name" not in page
    assert not re.search(r"(?:ERROR|SEVERE)/[34]", page)
    assert "1. Verdicts" in page and "full_whole_chain (T4)" in page and "shortcut (T4-from2)" in page
    rows = verdict_rows(page)
    assert len(rows) == len(pd.read_csv(tiny_sweep / "results" / "tables" / "verdicts.csv"))
    claims = {}
    for row in rows:
        pair = (row["model"], row["task"], row["chain"], row["subject (ran)"], row["peer (ran)"])
        claims.setdefault(pair, []).append(row["claim: ratio <="])
    assert ("embedded", "latent", "T4-from2", "shortcut (T4-from2)", "full_whole_chain (T4)") in claims
    assert all(sorted(thresholds) == ["0.1", "1"] for thresholds in claims.values()), claims


def test_a_sweep_of_failed_and_diverged_runs_says_so_and_reruns_only_the_failures(tmp_path):
    """Latent runs with a broken reward fail, fine-tuning with a reward that explodes diverges:
    the tables come out, one console line counts them, and the exit status is non-zero (no run
    ended ok). Once the reward is fixed, planning a rerun changes no file; the rerun runs the
    failed runs alone and keeps the diverged ones (results), and a plain sweep after it has
    nothing to do."""
    reward = tmp_path / "reward.py"
    reward.write_text(
        "def score(images):\n    raise ValueError('the reward is broken')\n\n"
        "def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n"
    )
    config = {
        **TINY,
        "tasks": ["latent", "finetune"],
        "variants": ["full"],
        "quality": {**TINY["quality"], "models": []},
        "guidance": None,
        "runs": {
            "seeds": [0, 1],
            "tasks": {
                "latent": {**TASK, "reward": f"{reward}:score", "reward_options": {}, "audit_every": 0},
                "finetune": {
                    **TASK,
                    "reward": f"{reward}:steep",
                    "reward_options": {},
                    "lr": 1e30,
                    "reward_tolerance": 1.0,
                    "audit_every": 0,
                    "task_options": {"eval_samples": 2, "monitor_samples": 2},
                },
            },
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    done = sweep(tmp_path)
    failed_line = "4 of 4 runs did not end ok (2 failed, 2 diverged); see results/tables/summary.csv"
    assert done.returncode != 0 and failed_line in done.stderr
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert sorted(summary["status"]) == ["diverged", "diverged", "failed", "failed"]
    assert summary.loc[summary["status"] == "failed", "reason"].str.contains("the reward is broken").all()
    for name in ("verdicts", "cost_to_quality", "methods", "evaluations", "audits", "runs"):
        assert (tmp_path / "results" / "tables" / f"{name}.csv").exists(), name

    reward.write_text(
        "def score(images):\n    return images.mean(dim=(1, 2, 3))\n\n"
        "def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n"
    )
    before = checksum(tmp_path)
    planned = sweep(tmp_path, "-n", "--config", "rerun_failed=true")
    assert planned.returncode == 0 and re.search(r"^run_latent_T2\s+1$", planned.stdout, re.MULTILINE)
    assert checksum(tmp_path) == before, "a dry run changed files"
    rerun = sweep(tmp_path, "--config", "rerun_failed=true")
    assert rerun.returncode == 0 and "2 of 4 runs did not end ok (2 diverged)" in rerun.stderr  # some ok: a note
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert sorted(summary["status"]) == ["diverged", "diverged", "ok", "ok"]
    assert len(list((tmp_path / "results" / "retry" / "failed").rglob("seed*.attempt1.json"))) == 2
    after = sweep(tmp_path, "-n")
    assert "Nothing to be done" in after.stdout + after.stderr


def test_odd_paths_and_values_reach_the_jobs_quoted(tmp_path):
    """A checkout whose path holds a space, a weights directory named with `$(...)`, quotes and
    `;`, and a reward file named likewise: the sweep runs, and nothing they name is executed."""
    checkout = tmp_path / "odd checkout" / "with space"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    marker = tmp_path / "MARKER"
    weights = tmp_path / f"w $(touch {marker}) 'q'; x"
    shutil.copytree(ROOT / "results" / "models", weights)
    reward = tmp_path / f"r $(touch {marker}2).py"  # the marker's slashes make it a nested path
    reward.parent.mkdir(parents=True, exist_ok=True)
    reward.write_text("def ink(images):\n    return images.mean(dim=(1, 2, 3))\n")
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    config = {
        **TINY,
        "weights": str(weights),
        "tasks": ["latent"],
        "variants": ["full"],
        "quality": {**TINY["quality"], "models": []},
        "guidance": None,
        "runs": {
            "seeds": [0],
            "tasks": {
                "latent": {**TASK, "reward": f"{reward}:ink", "reward_options": {}, "task_options": {"prompt": "3"}}
            },
        },
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    done = sweep(workdir, checkout=checkout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists() and not Path(f"{marker}2").exists()
    summary = pd.read_csv(workdir / "results" / "tables" / "summary.csv")
    assert list(summary["status"]) == ["ok"]
    # a missing weight file is retrained (or copied) into the results, never written over the given ones
    (weights / "classifier.json").unlink()
    plan = subprocess.run(
        snakemake(workdir, "-n", "--forceall", "-p", checkout=checkout),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert re.search(r"^train\s+1$", plan.stdout, re.MULTILINE) and re.search(
        r"^copy_weights\s+1$", plan.stdout, re.MULTILINE
    )
    outputs = [
        workdir / path
        for line in re.findall(r"^\s*output: (.*)$", plan.stdout, re.MULTILINE)
        for path in line.split(", ")
    ]
    retrained = workdir / "results" / "retrained"
    assert {retrained / "classifier.json", retrained / "classifier.safetensors"} <= set(outputs), outputs
    written = [path for path in outputs if path.resolve().is_relative_to(weights.resolve())]
    assert not written, f"planned outputs inside the given weights: {written}"
    assert not marker.exists()


def test_the_slurm_profile_plans_the_jobs_and_names_only_rules_the_workflow_has():
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--profile", "config/profiles/slurm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        re.search(r"^run_latent_T10\s+\d+$", done.stdout, re.MULTILINE)
        and "This was a dry-run" in done.stdout + done.stderr
    )
    runs = [line for line in done.stdout.splitlines() if "evals.cli" in line and " run --" in line]
    assert runs and all("--gpus-per-job 1 " in line for line in runs)  # every run job asks for its GPU
    rules = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules"], cwd=ROOT, capture_output=True, text=True, timeout=300
    ).stdout.split()
    profile = yaml.safe_load((ROOT / "config" / "profiles" / "slurm" / "config.yaml").read_text())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    assert named and named <= set(rules), f"the profile names rules the workflow lacks: {sorted(named - set(rules))}"


def test_the_workflow_lints_and_plans_its_other_targets():
    for args in (["-n", "--quiet"], ["bench", "-n", "--quiet"], ["profile", "-n", "--quiet"]):
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (args, done.stderr[-2000:])
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-3000:]

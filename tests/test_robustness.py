"""What a user meets when things go wrong, on the command line: a failure reruns, once fixed,
without touching the other records; a memory budget, the default one too, ends a run that would
not fit, quickly, with a record; plug-ins that do not load are one line; and the smaller
promises (a record for an absent or unknown device, an output directory checked first, strict
JSON, readable weights, a run that leaves any sane range)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals.cli import main
from evals.experiment import RunSpec, run
from evals.rerun import retry_token, stage_failed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


@pytest.mark.slow
def test_a_rerun_moves_kept_records_back_untouched(tmp_path):
    """A job with one ok and one failed seed: staging moves both aside; the rerun moves the ok
    record back, the same file, and runs only the failed seed."""
    job = tmp_path / "results" / "runs" / "embedded" / "latent" / "shortcut" / "T2"
    flags = [
        "run",
        "--task",
        "latent",
        "--method",
        "shortcut",
        "--variant",
        "shortcut",
        "--steps",
        "2",
        "--iters",
        "1",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--sweep",
    ]
    assert main(flags + ["--seed", "0", "1", "--out", str(job / "seed{seed}.json")]) == 0
    failed = json.loads((job / "seed1.json").read_text())
    failed.update(status="failed", reason="ValueError: broken")
    (job / "seed1.json").write_text(json.dumps(failed))
    kept = (job / "seed0.json").read_text()
    inode = (job / "seed0.json").stat().st_ino
    records = [str((job / f"seed{s}.json").relative_to(tmp_path)) for s in (0, 1)]
    assert retry_token(records, rerun_failed=False, root=tmp_path) == "0"
    assert retry_token(records, rerun_failed=True, root=tmp_path) == "1"
    assert stage_failed([records], root=tmp_path) == 1
    assert not (job / "seed0.json").exists() and not (job / "seed1.json").exists()
    assert retry_token(records, rerun_failed=True, root=tmp_path) == "1"  # the same after staging: no second rerun
    reuse = tmp_path / "results" / "retry" / "runs" / "embedded" / "latent" / "shortcut" / "T2"
    assert main(flags + ["--seed", "0", "1", "--reuse", str(reuse), "--out", str(job / "seed{seed}.json")]) == 0
    assert (job / "seed0.json").read_text() == kept and (job / "seed0.json").stat().st_ino == inode
    assert json.loads((job / "seed1.json").read_text())["status"] == "ok"


def test_a_run_past_its_memory_budget_ends_quickly_with_a_record(tmp_path):
    """The prediction from batches 1 and 2 refuses a gradient that would not fit, in seconds."""
    out = tmp_path / "big.json"
    start = time.perf_counter()
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--task",
            "latent",
            "--method",
            "full",
            "--steps",
            "4",
            "--iters",
            "2",
            "--batch",
            "20000",
            "--mem-mb",
            "2500",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    seconds = time.perf_counter() - start
    record = json.loads(out.read_text())
    assert code == 1 and record["status"] == "out_of_memory" and "budget of 2500 MiB" in record["reason"]
    assert seconds < 60, seconds


def test_an_allocation_past_the_budget_fails_at_once(tmp_path):
    """Beyond the prediction, the budget is a limit the allocator meets: a metric that asks for
    4 GiB under a 2.5 GiB budget ends the run as out_of_memory instead of swelling."""
    greedy = tmp_path / "greedy.py"
    greedy.write_text(
        "import torch\n\ndef hog(images):\n    block = torch.ones(2**30)\n"
        "    return images.mean(dim=(1, 2, 3)) + block[0]\n"
    )
    out = tmp_path / "greedy.json"
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--method",
            "shortcut",
            "--steps",
            "2",
            "--iters",
            "1",
            "--batch",
            "2",
            "--metric",
            f"{greedy}:hog",
            "--mem-mb",
            "2500",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert code == 1 and record["status"] == "out_of_memory", record.get("reason")
    assert len(record["iterations"]) == 1  # the run's iterations are kept


@pytest.mark.slow
def test_without_a_budget_a_run_takes_the_default_one(tmp_path):
    """No --mem-mb: the run takes half the memory available when it starts, so a batch that would
    swell past the machine ends as out_of_memory within a minute, its resident memory never more
    than 1 GB past that budget (measured as the child process's peak)."""
    import resource

    from sdo.memory import default_budget_mb

    out = tmp_path / "big.json"
    command = [
        sys.executable,
        "-m",
        "evals.cli",
        "--threads",
        "1",
        "run",
        "--task",
        "latent",
        "--method",
        "shortcut",
        "--steps",
        "4",
        "--iters",
        "2",
        "--batch",
        "20000",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = json.loads(out.read_text())
    assert done.returncode == 1 and record["status"] == "out_of_memory" and "over the budget" in record["reason"]
    assert seconds < 60 and peak_mb < default_budget_mb() + 1024, (seconds, peak_mb)


@pytest.mark.parametrize(
    "device, words",
    [("cuda", "CUDA is not available"), ("tpu", "allowed: auto, cpu, cuda"), ("gpu:0", "unknown device")],
)
def test_an_absent_or_unknown_device_still_writes_a_record(tmp_path, device, words):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "device.json"
    assert main(["run", "--method", "full", "--steps", "2", "--iters", "1", "--device", device, "--out", str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and words in record["reason"]


def test_an_output_directory_that_cannot_be_written_is_found_before_any_work(tmp_path):
    """A directory that cannot be made (a file stands in its place) or written: the run fails at
    once, before loading anything, saying which."""
    (tmp_path / "taken").write_text("a file, not a directory")
    start = time.perf_counter()
    record = run(RunSpec(method="full", steps=2, iters=50, out=tmp_path / "taken" / "r.json"))
    assert record["status"] == "failed" and "cannot create the output directory" in record["reason"]
    assert not record["iterations"] and time.perf_counter() - start < 5
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            return  # a user who writes anywhere (root) cannot be refused by permissions
        record = run(RunSpec(method="full", steps=2, iters=50, out=locked / "r.json"))
        assert record["status"] == "failed" and "not writable" in record["reason"] and not record["iterations"]
    finally:
        locked.chmod(0o700)


def test_a_run_that_leaves_any_sane_range_is_unstable_and_keeps_its_evaluations(tmp_path):
    """--lr 1e6 drives the held-out reward far below its start, past 100 times its spread: the
    run stops as unstable (kept out of verdicts like a divergence), its evaluations kept."""
    out = tmp_path / "wild.json"
    main(
        [
            "--threads",
            "1",
            "run",
            "--method",
            "shortcut",
            "--steps",
            "3",
            "--iters",
            "4",
            "--batch",
            "4",
            "--eval-every",
            "1",
            "--lr",
            "1e6",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert record["status"] == "unstable" and "100 times its starting spread" in record["reason"]
    assert len(record["evaluations"]) >= 2


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "does not exist"),
        ("def broken(:\n", "syntax error on line 1"),
        ("raise RuntimeError('no licence')\n", "importing it raised RuntimeError: no licence"),
        (
            "from sdo.estimators import register_estimator\nfrom sdo.estimators.full import Full\n\n"
            "@register_estimator\nclass Again(Full):\n    name = 'full'\n",
            "registered twice: by",
        ),
    ],
)
def test_a_plugin_that_does_not_load_is_one_line_and_exit_2(tmp_path, capsys, content, words):
    plugin = tmp_path / "plugin.py"
    if content is not None:
        plugin.write_text(content)
    code = main(
        [
            "--plugin",
            str(plugin),
            "run",
            "--method",
            "full",
            "--steps",
            "2",
            "--iters",
            "1",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and words in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    if "registered twice" in words:
        assert str(plugin.resolve()) in error and "sdo/estimators/full.py" in error  # both files named


@pytest.mark.parametrize(
    "name, words",
    [
        ("a:b:c", "names no callable"),
        ("nosuchpkg.mod:fn", "cannot be imported"),
        ("evals.images:nosuch", "defines no 'nosuch'"),
    ],
)
def test_a_reward_that_names_no_callable_says_what_is_allowed(tmp_path, name, words):
    out = tmp_path / "r.json"
    main(["run", "--method", "full", "--steps", "2", "--iters", "1", "--reward", name, "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and words in record["reason"]
    assert "package.module:function" in record["reason"] or "defines no" in words  # the forms where the form is wrong


@pytest.mark.slow
def test_samplers_are_a_per_run_choice(tmp_path, capsys):
    """DPM-Solver++ 2M and Euler ancestral run on the embedded model; DOODL on a multistep solver
    is not applicable, saying why; an unknown sampler is refused, naming those there are."""
    for sampler in ("dpmpp_2m", "euler_ancestral"):
        out = tmp_path / f"{sampler}.json"
        assert (
            main(
                [
                    "--threads",
                    "1",
                    "run",
                    "--task",
                    "latent",
                    "--method",
                    "full",
                    "--sampler",
                    sampler,
                    "--steps",
                    "6",
                    "--iters",
                    "2",
                    "--batch",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        record = json.loads(out.read_text())
        assert record["status"] == "ok" and record["sampler"] == sampler
    out = tmp_path / "doodl.json"
    main(["run", "--method", "doodl", "--sampler", "dpmpp_2m", "--steps", "6", "--iters", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["status"] == "not_applicable" and "doodl needs a single-step sampler; dpmpp_2m is" in record["reason"]
    with pytest.raises(SystemExit) as usage:
        main(["run", "--method", "full", "--sampler", "nonsense", "--steps", "2", "--iters", "1", "--out", str(out)])
    assert usage.value.code == 2 and "dpmpp_2m" in capsys.readouterr().err


def test_records_are_strict_json_and_diverged_ones_keep_evaluations(tmp_path):
    helpers = tmp_path / "helpers.py"
    helpers.write_text(
        "def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n\n"
        "def undefined(images):\n    return images.mean(dim=(1, 2, 3)) * float('nan')\n"
    )

    def refuse(constant):
        raise ValueError(f"bare {constant} in a record")

    out = tmp_path / "diverged.json"
    main(
        [
            "--threads",
            "1",
            "run",
            "--method",
            "full",
            "--steps",
            "2",
            "--iters",
            "3",
            "--batch",
            "2",
            "--eval-every",
            "1",
            "--reward",
            f"{helpers}:steep",
            "--lr",
            "1e30",
            "--reward-tolerance",
            "1",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text(), parse_constant=refuse)
    assert record["status"] == "diverged" and len(record["iterations"]) == 1 and len(record["evaluations"]) == 1
    out = tmp_path / "nan.json"
    assert (
        main(
            [
                "--threads",
                "1",
                "run",
                "--method",
                "shortcut",
                "--steps",
                "2",
                "--iters",
                "1",
                "--batch",
                "2",
                "--metric",
                f"{helpers}:undefined",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text(), parse_constant=refuse)
    assert record["final"][f"metric:{helpers}:undefined"] is None  # NaN, written as null


def test_task_options_are_the_tasks_own(tmp_path):
    out = tmp_path / "run.json"
    code = main(
        [
            "run",
            "--task",
            "latent",
            "--method",
            "full",
            "--steps",
            "2",
            "--iters",
            "1",
            "--task-option",
            "monitor_samples=2",
            "--out",
            str(out),
        ]
    )
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
    from evals import jobs
    from evals.config import layered

    config = layered(
        [ROOT / "config" / "config.yaml", {"tasks": ["latent"], "models": ["embedded-flow"], "variants": ["shortcut"]}]
    )
    planned = {(job.model, job.task, job.variant) for job in jobs.run_jobs(config)}
    assert planned == {("embedded-flow", "latent", "shortcut")}

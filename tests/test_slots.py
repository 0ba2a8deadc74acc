"""GPU slots: real job processes on a simulated device count claim distinct devices, wait for a
free one, get a killed holder's slot back, and leave SLURM's allocation alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals import slots

ROOT = Path(__file__).resolve().parents[1]

# A job: claims, reports, holds its slot until the gate file exists, then `hold` seconds more.
JOB = r"""
import json, logging, os, sys, time
from pathlib import Path
from evals import slots
logging.basicConfig(level=logging.INFO, format="%(message)s")
lock_dir, gate, hold = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
wanted, timeout = int(sys.argv[4]), float(sys.argv[5])
try:
    slot = slots.claim_device(wanted, lock_dir, timeout=timeout, poll=0.02)
except TimeoutError as error:
    print(json.dumps({"error": str(error)}), flush=True)
    sys.exit(0)
report = {"claimed": time.time(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "physical": slots.physical_device("cuda:0"), "slot": None if slot is None else list(slot.indices)}
print(json.dumps(report), flush=True)
while not gate.exists():
    time.sleep(0.01)
time.sleep(hold)
print(json.dumps({"ended": time.time()}), flush=True)
"""


class Job:
    """One job process: `report` is its claim, read as soon as it is printed."""

    def __init__(
        self, tmp_path: Path, env: dict, gate: Path, hold: float = 0.0, wanted: int = 1, timeout: float = 10.0
    ):
        unset = ("SLURM_", "CUDA_VISIBLE_DEVICES", "SDO_")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", JOB, str(tmp_path / "locks"), str(gate), str(hold), str(wanted), str(timeout)],
            cwd=ROOT,
            env={**inherited, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._report = None

    @property
    def report(self) -> dict:
        if self._report is None:
            self._report = json.loads(self.process.stdout.readline())
        return self._report

    def finish(self) -> tuple[dict | None, str]:
        """After `report`: the `ended` line (None if there is none) and stderr."""
        self.process.wait(timeout=20)
        out, err = self.process.stdout.read(), self.process.stderr.read()  # past the lines `report` buffered
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return (lines[-1] if lines and "ended" in lines[-1] else None), err


@pytest.fixture
def jobs():
    started = []
    yield started
    for job in started:
        if job.process.poll() is None:
            job.process.kill()
        job.process.communicate()


def start(jobs: list, *args, **kwargs) -> Job:
    jobs.append(Job(*args, **kwargs))
    return jobs[-1]


def test_concurrent_jobs_get_distinct_devices(tmp_path, jobs):
    gate = tmp_path / "gate"
    started = [start(jobs, tmp_path, {slots.SIMULATED: "4"}, gate) for _ in range(4)]
    reports = [job.report for job in started]  # all four hold their slot at once: the gate is closed
    gate.touch()
    assert sorted(report["visible"] for report in reports) == ["0", "1", "2", "3"]
    assert all(report["physical"] == report["visible"] for report in reports)
    assert sorted(report["slot"][0] for report in reports) == [0, 1, 2, 3]
    assert sorted(path.name for path in (tmp_path / "locks").iterdir()) == [f"gpu-{i}.lock" for i in range(4)]


def test_jobs_of_two_devices_each_split_four(tmp_path, jobs):
    gate = tmp_path / "gate"
    pair = [start(jobs, tmp_path, {slots.SIMULATED: "4"}, gate, wanted=2) for _ in range(2)]
    visible = [job.report["visible"].split(",") for job in pair]
    gate.touch()  # claimed at once, the two may interleave (0,2 and 1,3): any split into disjoint pairs is right
    assert all(len(devices) == 2 for devices in visible) and sorted(sum(visible, [])) == ["0", "1", "2", "3"]


def test_a_killed_jobs_slot_is_reclaimed(tmp_path, jobs):
    gate = tmp_path / "gate"
    victim, other = (start(jobs, tmp_path, {slots.SIMULATED: "2"}, gate) for _ in range(2))
    held = victim.report["visible"]
    assert {held, other.report["visible"]} == {"0", "1"}  # every slot is taken
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    opened = tmp_path / "open"
    opened.touch()
    successor = start(jobs, tmp_path, {slots.SIMULATED: "2"}, opened, timeout=5.0)
    assert successor.report["visible"] == held
    gate.touch()


def test_a_job_waits_while_every_slot_is_held(tmp_path, jobs):
    opened = tmp_path / "open"
    opened.touch()
    three = [start(jobs, tmp_path, {slots.SIMULATED: "2"}, opened, hold=0.5) for _ in range(3)]
    finished = [(job.report, *job.finish()) for job in three]
    finished.sort(key=lambda item: item[0]["claimed"])
    (first, first_end, first_log), (second, second_end, second_log), (third, _, third_log) = finished
    assert {first["visible"], second["visible"]} == {"0", "1"} and third["visible"] in {"0", "1"}
    assert third["claimed"] >= min(first_end["ended"], second_end["ended"])  # it started only after one ended
    assert third_log.count("waiting for 1 free GPU slot(s) of 2") == 1  # logged once, however long it polled
    assert "waiting" not in first_log + second_log


def test_a_timeout_names_the_holders(tmp_path, jobs):
    gate = tmp_path / "gate"
    holder = start(jobs, tmp_path, {slots.SIMULATED: "2"}, gate, wanted=2)
    assert holder.report["visible"] == "0,1"
    began = time.monotonic()
    late = start(jobs, tmp_path, {slots.SIMULATED: "2"}, gate, timeout=0.3)
    error = late.report["error"]
    gate.touch()
    assert time.monotonic() - began < 5
    assert "no 1 free GPU slot(s) of 2" in error and "within 0.3 s" in error
    assert f"0: pid {holder.process.pid}" in error and f"1: pid {holder.process.pid}" in error


@pytest.mark.parametrize(
    "env, visible",
    [
        ({"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "2,3"}, "2,3"),
        ({"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "0,1"}, None),
    ],
)
def test_slurm_keeps_its_devices(tmp_path, jobs, env, visible):
    opened = tmp_path / "open"
    opened.touch()
    job = start(jobs, tmp_path, {slots.SIMULATED: "4", **env}, opened)
    assert job.report["slot"] is None and job.report["visible"] == visible
    assert not (tmp_path / "locks").exists()


def test_slots_follow_the_parents_device_list(tmp_path, jobs):
    gate = tmp_path / "gate"
    parent = {slots.SIMULATED: "4", "CUDA_VISIBLE_DEVICES": "3,5,6,7"}
    first = start(jobs, tmp_path, parent, gate)
    assert (first.report["slot"], first.report["visible"], first.report["physical"]) == ([0], "3", "3")
    second = start(jobs, tmp_path, parent, gate)
    assert (second.report["slot"], second.report["visible"], second.report["physical"]) == ([1], "5", "5")
    gate.touch()


@pytest.mark.parametrize("gpus_per_job, simulated", [(0, "4"), (1, "1"), (1, "0"), (2, "1")])
def test_nothing_is_claimed_without_a_choice_of_devices(tmp_path, monkeypatch, gpus_per_job, simulated):
    monkeypatch.setenv(slots.SIMULATED, simulated)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slots.claim_device(gpus_per_job, tmp_path / "locks") is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize(
    "gpus_per_job, simulated, message",
    [
        (-1, "4", "gpus_per_job must be an integer >= 0, got -1"),
        (True, "4", "got True"),
        (5, "4", "gpus_per_job=5 asks for more GPUs than the 4 visible (0,1,2,3)"),
        (1, "two", "SDO_SIMULATED_GPUS must be"),
    ],
)
def test_bad_requests_are_named(tmp_path, monkeypatch, gpus_per_job, simulated, message):
    monkeypatch.setenv(slots.SIMULATED, simulated)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        slots.claim_device(gpus_per_job, tmp_path / "locks")


@pytest.mark.parametrize(
    "listed, device, physical",
    [
        (None, "cuda", "0"),
        (None, "cuda:2", "2"),
        ("3,5,6,7", "cuda:1", "5"),
        ("GPU-ab12, GPU-cd34", "cuda", "GPU-ab12"),
        ("3", "cuda:1", None),
        ("3", "cpu", None),
    ],
)
def test_physical_device(monkeypatch, listed, device, physical):
    if listed is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert slots.physical_device(device) == physical


def test_a_claim_is_held_once_per_process_until_released(tmp_path, monkeypatch, jobs):
    monkeypatch.setenv(slots.SIMULATED, "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # restored after the test, whatever the claim sets
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    opened = tmp_path / "open"
    opened.touch()
    slot = slots.claim_device(1, tmp_path / "locks")
    try:
        assert (slot.indices, slot.devices, os.environ["CUDA_VISIBLE_DEVICES"]) == ((0,), ("0",), "0")
        assert slots.claim_device(1, tmp_path / "locks") is slot
        parent = {slots.SIMULATED: "2", "CUDA_VISIBLE_DEVICES": "0,1"}
        assert start(jobs, tmp_path, parent, opened).report["visible"] == "1"
    finally:
        slot.release()
    assert start(jobs, tmp_path, parent, opened).report["visible"] == "0"

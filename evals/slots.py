"""One GPU per job: a job process claims free device slots by lock files and then sees only its own.

The rule: a job that asks for `gpus_per_job` >= 1 GPUs on a machine where more than one is
visible takes that many free slots under a lock directory (`LOCK_DIR`, `.snakemake/gpu-slots/`
of the working directory): one exclusive `fcntl.flock` per device, held on an open file
descriptor for the rest of the process's life. It then sets `CUDA_VISIBLE_DEVICES` to those
devices, before CUDA is initialised, so the job's `cuda:0` is its own GPU. Slot i is the i-th
device the parent lists in `CUDA_VISIBLE_DEVICES`, or physical device i where it lists none.
With fewer free slots than jobs a job waits, polling, until one frees, or raises past its
timeout. The kernel drops a flock when the last descriptor of its file closes, which happens
when the process exits or is killed: a killed job's lock vanishes with it and its slot is free
at once, with no stale lock to clean up.

Nothing is claimed, and nothing changed, when `gpus_per_job` is 0, when one GPU or none is
visible, or under SLURM with a GPU allocation (`SLURM_JOB_ID` with `CUDA_VISIBLE_DEVICES`,
`SLURM_JOB_GPUS` or `SLURM_STEP_GPUS` set): SLURM binds the devices itself.

Cost: a lock file per device, and, for each claim asked for, one short child process that counts
the devices with `torch.cuda.device_count()` (an import of torch, a second or two): counting in
this process could initialise the CUDA driver (torch falls back to it where NVML cannot count,
as with MIG devices), after which `CUDA_VISIBLE_DEVICES` no longer takes effect. A job waits only
while more jobs ask than there are devices; polling adds at most `poll` seconds to a wait.
`SDO_SIMULATED_GPUS=N`, read here alone, stands in for the count (tests on machines without GPUs).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_DIR = Path(".snakemake/gpu-slots")
SIMULATED = "SDO_SIMULATED_GPUS"
SLURM_GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


@dataclass
class Slot:
    """The device slots this process holds: their numbers, their physical names as
    `CUDA_VISIBLE_DEVICES` gives them, and the descriptors that hold their locks."""

    indices: tuple[int, ...]
    devices: tuple[str, ...]
    lock_dir: Path
    descriptors: tuple[int, ...] = field(repr=False)

    def release(self) -> None:
        """Free the slots now (the process's end frees them anyway); `CUDA_VISIBLE_DEVICES` stays."""
        global _held
        for descriptor in self.descriptors:
            os.close(descriptor)
        self.descriptors = ()
        if _held is self:
            _held = None


_held: Slot | None = None


def claim_device(
    gpus_per_job: int, lock_dir: Path | str = LOCK_DIR, *, timeout: float | None = None, poll: float = 0.5
) -> Slot | None:
    """Claim `gpus_per_job` free device slots for this process's lifetime and make them its only
    visible devices; None where nothing is to be claimed (see the module's rule). Waits for a
    free slot, polling every `poll` seconds; past `timeout` seconds (None: no limit) raises
    TimeoutError. A second call in the same process returns the slots it already holds."""
    if isinstance(gpus_per_job, bool) or not isinstance(gpus_per_job, int) or gpus_per_job < 0:
        raise ValueError(f"gpus_per_job must be an integer >= 0, got {gpus_per_job!r}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
    if not poll > 0:
        raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
    if _held is not None:
        return _held
    if gpus_per_job == 0 or _slurm_binds_gpus():
        return None
    devices = visible_devices()
    if len(devices) <= 1:
        return None
    if gpus_per_job > len(devices):
        raise ValueError(
            f"gpus_per_job={gpus_per_job} asks for more GPUs than the {len(devices)} visible ({','.join(devices)})"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("claim_device must run before CUDA is initialised: CUDA_VISIBLE_DEVICES is read only then")
    return _wait_for_slots(gpus_per_job, devices, Path(lock_dir), timeout, poll)


def physical_device(device: object = "cuda:0") -> str | None:
    """The physical GPU (index or UUID, as `CUDA_VISIBLE_DEVICES` names it) behind `device`
    (`cuda`, `cuda:i` or a torch.device) in this process; None for a device that is not CUDA or
    an index past the visible list."""
    kind, _, index = str(device).partition(":")
    if kind != "cuda":
        return None
    index = int(index or 0)
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return str(index)
    names = _names(listed)
    return names[index] if index < len(names) else None


def visible_devices() -> list[str]:
    """The devices this process may claim, by physical name: the parent's `CUDA_VISIBLE_DEVICES`
    entries where it sets them, else 0..n-1, cut to the device count."""
    count = _device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = _names(listed) if listed is not None else [str(i) for i in range(count)]
    return names[:count]


def _names(listed: str) -> list[str]:
    return [name.strip() for name in listed.split(",") if name.strip()]


def _slurm_binds_gpus() -> bool:
    return "SLURM_JOB_ID" in os.environ and any(os.environ.get(name) for name in SLURM_GPU_VARIABLES)


def _device_count() -> int:
    """`SDO_SIMULATED_GPUS` where set, else torch's count, taken in a child process."""
    simulated = os.environ.get(SIMULATED)
    if simulated is not None:
        if not simulated.strip().isdigit():
            raise ValueError(f"{SIMULATED} must be an integer >= 0, got {simulated!r}")
        return int(simulated)
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"counting GPUs with torch failed: {done.stderr.strip()[-1000:]}")
    return int(done.stdout.split()[-1])


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_claim(wanted: int, devices: list[str], lock_dir: Path) -> list[tuple[int, int]] | None:
    """`wanted` (slot, descriptor) pairs whose locks this call took, or None, holding nothing,
    where fewer were free."""
    taken = []
    for index, device in enumerate(devices):
        descriptor = os.open(_lock_path(lock_dir, device), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())  # who holds it, for people and for error messages
        taken.append((index, descriptor))
        if len(taken) == wanted:
            return taken
    for _, descriptor in taken:  # never hold part of a claim while waiting: two jobs could block each other
        os.close(descriptor)
    return None


def _holders(devices: list[str], lock_dir: Path) -> str:
    """`device: pid` of each lock file, as its last holder wrote it."""
    pids = []
    for device in devices:
        try:
            pids.append(f"{device}: pid {_lock_path(lock_dir, device).read_text().strip() or '?'}")
        except OSError:
            pids.append(f"{device}: never claimed")
    return ", ".join(pids)


def _wait_for_slots(wanted: int, devices: list[str], lock_dir: Path, timeout: float | None, poll: float) -> Slot:
    global _held
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while (taken := _try_claim(wanted, devices, lock_dir)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"no {wanted} free GPU slot(s) of {len(devices)} under {lock_dir} within {timeout} s "
                f"(last holders: {_holders(devices, lock_dir)})"
            )
        if not waited:
            log.info(
                "waiting for %d free GPU slot(s) of %d under %s (last holders: %s)",
                wanted,
                len(devices),
                lock_dir,
                _holders(devices, lock_dir),
            )
            waited = True
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
    indices = tuple(index for index, _ in taken)
    _held = Slot(indices, tuple(devices[i] for i in indices), lock_dir, tuple(fd for _, fd in taken))
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_held.devices)
    log.info(
        "GPU slot %s under %s: CUDA_VISIBLE_DEVICES=%s",
        ",".join(map(str, indices)),
        lock_dir,
        os.environ["CUDA_VISIBLE_DEVICES"],
    )
    return _held

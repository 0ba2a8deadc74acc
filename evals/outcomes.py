"""How an experiment ends, as a record: every record carries its spec, the environment (device,
library versions, commit) and a `status`, and is written atomically whatever happened.

Statuses: ok; not_applicable (the estimator's rule cannot reach the parameter or does not hold
for the sampler); invalid_start (the estimator's own sampler does not start where the base
sampler does: no baseline); diverged (the loss, a gradient or a parameter became non-finite;
the iterations and evaluations so far are kept); unstable (the held-out reward left any sane
range; kept like diverged); out_of_memory (past the device or the run's memory budget); failed
(with the reason). A run never raises for these: the record says it. Only `ok` runs enter the
cost tables and verdicts; the others are counted by status beside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import torch

from evals import records
from sdo.estimators import NotApplicable
from sdo.memory import OverBudget
from sdo.tasks import Diverged
from sdo.tasks.loop import InvalidStart, Unstable

log = logging.getLogger(__name__)
STATUSES = ("ok", "not_applicable", "invalid_start", "diverged", "unstable", "out_of_memory", "failed")


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, or `cuda[:i]` (refused when CUDA or that device is
    absent); ValueError naming what is allowed for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported here; allowed: auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def out_of_memory(error: Exception) -> bool:
    """CUDA's torch.OutOfMemoryError, the CPU allocator's RuntimeError ("can't allocate
    memory"), Python's MemoryError, or a run predicted past its budget (OverBudget)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError, OverBudget)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


@contextlib.contextmanager
def recorded_failures(record: dict):
    """Turn what stops an experiment into its record's status and reason."""
    try:
        yield
    except NotApplicable as reason:
        record.update(status="not_applicable", reason=str(reason))
    except InvalidStart as error:
        record.update(status="invalid_start", reason=str(error), start_deviation=error.deviation)
    except Diverged as error:
        record.update(
            status="unstable" if isinstance(error, Unstable) else "diverged",
            reason=str(error),
            iterations=error.trace.rows,
            evaluations=error.evaluations,
            audits=error.trace.audits,
            saved_bytes=error.trace.saved_bytes,
        )
    except Exception as error:
        if out_of_memory(error):
            record.update(status="out_of_memory", reason=str(error).splitlines()[0])
        else:
            record.update(status="failed", reason=f"{type(error).__name__}: {error}")
            log.debug("traceback of the failure", exc_info=True)
    if record["status"] != "ok":
        log.warning("%s: %s", record["status"], record["reason"])


def config_of(spec) -> dict:
    """What a record keeps of its spec: every field, the variant named (the method by default)."""
    config = records.strict(dataclasses.asdict(spec))
    config["variant"] = getattr(spec, "variant", None) or getattr(spec, "method", None)
    return config


def new_record(spec) -> dict:
    """A record of `spec`: its config (`config_of`), the environment, status ok."""
    config = config_of(spec)
    try:
        environment = records.environment(resolve_device(spec.device))
    except ValueError:
        environment = records.environment(torch.device("cpu"))
    return {"variant": config["variant"], "config": config, **environment, "status": "ok"}


def check_writable(out: Path | str | None) -> None:
    """PermissionError naming the directory unless `out`'s directory can be written (made if
    missing): checked before any work, so a run never finishes into nowhere."""
    if out is None:
        return
    directory = Path(out).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create the output directory {directory}: {error.strerror}") from None
    if not directory.is_dir():
        raise PermissionError(f"cannot create the output directory {directory}: a file is in its place")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"the output directory {directory} is not writable")


def write_record(record: dict, out: Path | str | None) -> dict:
    """Write the record atomically to `out` (if given) and return it; where `out` cannot be
    written the record says so in its status and reason (the caller still gets it)."""
    if out is None:
        return record
    try:
        records.write_json(out, record)
    except OSError as error:
        record.update(
            status="failed",
            reason=f"{record.get('reason') or 'the record'}; it could not be written to {out}: "
            f"{error.strerror or error}",
        )
        log.error("%s", record["reason"])
        return record
    log.info("wrote %s (status %s)", out, record["status"])
    return record

"""Rerunning only the runs that failed, once their cause is fixed, without touching the others.

A run job writes every seed of one model, task, variant and T, and Snakemake deletes a job's
outputs before it runs it again. So `stage_failed` (the workflow calls it when the config says
`rerun_failed: true`) moves the records of every job that holds a `failed` record out of the
way: the failed ones to results/retry/failed/ (kept for reference), the others to
results/retry/; Snakemake then reruns those jobs, and `reuse` moves each staged record back, the
same file, where its seed's config is unchanged and its status is not `failed`, instead of
running that seed again. `ok`, `diverged`, `not_applicable` and `out_of_memory` records are
results and stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from evals.records import strict

log = logging.getLogger(__name__)
RETRY = Path("results/retry")
RERUN_STATUSES = ("failed",)


def _companions(record: Path) -> list[Path]:
    """A record and the files written beside it (its sample grid and samples)."""
    return [record, record.with_suffix(".png"), record.with_suffix(".samples.safetensors")]


def _move(record: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    for source, target in zip(_companions(record), _companions(destination)):
        if source.exists():
            os.replace(source, target)


def _status(record: Path) -> str | None:
    try:
        return json.loads(record.read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def stage_failed(jobs: list[list[str]], derived: str | None = None, root: Path | str = ".") -> int:
    """For every job (its record paths) with a failed record: move its records aside, and then
    remove `derived`, a table built from every record (Snakemake reruns a job whose outputs are
    missing only when something it must build needs them). Returns the number of failed
    records staged for a rerun."""
    root, failed = Path(root), 0
    for records in jobs:
        paths = [root / record for record in records]
        statuses = {path: _status(path) for path in paths if path.exists()}
        if not any(status in RERUN_STATUSES for status in statuses.values()):
            continue
        for path, status in statuses.items():
            relative = path.relative_to(root / "results")
            if status in RERUN_STATUSES:
                failed += 1
                _move(path, root / RETRY / "failed" / relative)
            else:
                _move(path, root / RETRY / relative)
    if failed:
        log.warning("rerunning %d failed runs; their jobs' other records are kept under %s and reused", failed, RETRY)
        if derived is not None and (root / derived).exists():
            (root / derived).unlink()
    return failed


def reuse(config: dict, out: Path, directory: Path | str | None) -> dict | None:
    """The staged record of this seed, moved back to `out`, when its config equals `config`
    (the path aside) and it did not fail; else None (the seed runs)."""
    if directory is None:
        return None
    staged = Path(directory) / out.name
    if not staged.exists():
        return None
    record = json.loads(staged.read_text())
    same = {k: v for k, v in strict(record["config"]).items() if k != "out"} == {
        k: v for k, v in strict(config).items() if k != "out"
    }
    if not same or record["status"] in RERUN_STATUSES:
        return None
    _move(staged, out)
    log.info("reused %s (status %s): its config is unchanged", out, record["status"])
    return record

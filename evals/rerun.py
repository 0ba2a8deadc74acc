"""Rerunning only the runs that failed, once their cause is fixed, without touching the others,
and without writing anything while a sweep is only planned.

A run job writes every seed of one model, task, variant and chain, and Snakemake deletes a
job's outputs before it runs it again. With `rerun_failed: true`:

1. while the workflow is parsed, `retry_token` only reads: a job holding a `failed` record gets
   a new value of its `retry` parameter (the number of its failed attempts staged so far plus
   the ones failing now), so Snakemake's params trigger reruns exactly those jobs; a dry run
   shows them and changes nothing;
2. when the sweep starts (`onstart`, never in a dry run), `stage_failed` moves those jobs'
   records out of the way: each failed one to results/retry/failed/ under a numbered name (the
   history that the token counts, so the next plain sweep sees the same token and reruns
   nothing), the others to results/retry/;
3. the job runs with `--reuse`: `reuse` moves each staged record back, the same file, where its
   seed's spec is unchanged and its status is not `failed`, instead of running that seed again.

`ok`, `diverged`, `unstable`, `not_applicable` and `out_of_memory` records are results, not
failures, and stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from evals.outcomes import config_of

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


def _attempts(record: Path, root: Path) -> list[Path]:
    """The failed attempts of `record` staged so far."""
    relative = record.relative_to(root / "results")
    folder = root / RETRY / "failed" / relative.parent
    return sorted(folder.glob(f"{relative.stem}.attempt*.json")) if folder.is_dir() else []


def failing(records: list[str], root: Path | str = ".") -> list[Path]:
    """The job's records (paths) whose status is failed now."""
    return [Path(root) / r for r in records if _status(Path(root) / r) in RERUN_STATUSES]


def retry_token(records: list[str], rerun_failed: bool, root: Path | str = ".") -> str:
    """The job's `retry` parameter: its failed attempts staged so far, plus those failing now
    when `rerun_failed` (read only: nothing is written)."""
    root = Path(root)
    staged = sum(len(_attempts(root / r, root)) for r in records)
    now = len(failing(records, root)) if rerun_failed else 0
    return str(staged + now)


def stage_failed(jobs: list[list[str]], root: Path | str = ".") -> int:
    """For every job (its record paths) holding a failed record, move its records aside (see
    the module docstring). Returns the number of failed records staged."""
    root, staged = Path(root), 0
    for records in jobs:
        paths = [root / record for record in records]
        if not failing(records, root):
            continue
        for path in paths:
            if not path.exists():
                continue
            relative = path.relative_to(root / "results")
            if _status(path) in RERUN_STATUSES:
                staged += 1
                attempt = len(_attempts(path, root)) + 1
                _move(path, root / RETRY / "failed" / relative.parent / f"{relative.stem}.attempt{attempt}.json")
            else:
                _move(path, root / RETRY / relative)
    if staged:
        log.warning("rerunning %d failed runs; their jobs' other records are kept under %s and reused", staged, RETRY)
    return staged


def reuse(spec, directory: Path | str | None) -> dict | None:
    """The staged record of this seed, moved back to `spec.out`, when its spec equals this one
    (the output path aside) and it did not fail; else None (the seed runs)."""
    if directory is None or spec.out is None:
        return None
    out = Path(spec.out)
    staged = Path(directory) / out.name
    if not staged.exists():
        return None
    record = json.loads(staged.read_text())
    ours = {k: v for k, v in config_of(spec).items() if k != "out"}
    theirs = {k: v for k, v in record["config"].items() if k != "out"}
    if ours != theirs or record["status"] in RERUN_STATUSES:
        return None
    _move(staged, out)
    log.info("reused %s (status %s): its spec is unchanged", out, record["status"])
    return record

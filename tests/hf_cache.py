"""A local Hugging Face cache holding saved pipelines, as `hf download` leaves one."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_as(directory: Path, repo_id: str, cache: Path) -> Path:
    """Copy the saved pipeline `directory` into `cache` as model `repo_id` (snapshot and
    refs/main); returns the cache root."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(directory, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return Path(cache)

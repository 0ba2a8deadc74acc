"""Weights as safetensors beside a JSON config; nothing here unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sdo.models.classifier import DigitClassifier
from sdo.models.denoiser import DigitDenoiser

KINDS = {"denoiser": DigitDenoiser, "flow_denoiser": DigitDenoiser, "classifier": DigitClassifier}
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "results" / "models"


def save(model: torch.nn.Module, kind: str, directory: Path | str = DEFAULT_DIR, metrics: dict | None = None) -> Path:
    """Write `<kind>.safetensors` and `<kind>.json` atomically (temporary file, then rename),
    readable by everyone (0644) whatever the umask or the writer's default."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta = directory / f"{kind}.safetensors", directory / f"{kind}.json"
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    save_file(state, f"{weights}.tmp")
    meta.with_suffix(".json.tmp").write_text(json.dumps({"config": model.config, "metrics": metrics or {}}, indent=2))
    for temporary in (f"{weights}.tmp", meta.with_suffix(".json.tmp")):
        os.chmod(temporary, 0o644)
    os.replace(f"{weights}.tmp", weights)
    os.replace(meta.with_suffix(".json.tmp"), meta)
    return weights


def load(kind: str, directory: Path | str = DEFAULT_DIR, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The trained `kind` (one of `KINDS`) in eval mode with gradients switched off."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(KINDS)}")
    directory = Path(directory)
    weights, meta = directory / f"{kind}.safetensors", directory / f"{kind}.json"
    retrain = f"retrain it with `sdo train {kind} --out {directory}`"
    for path in (weights, meta):
        if not path.exists():
            raise FileNotFoundError(f"model file {path} is missing; {retrain}")
    try:
        model = KINDS[kind](json.loads(meta.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"model file {meta} is not a valid {kind} config ({error}); {retrain}") from None
    try:
        model.load_state_dict(load_file(weights))
    except Exception as error:  # safetensors raises its own error type for truncated files
        raise ValueError(f"model file {weights} cannot be read as {kind} weights ({error}); {retrain}") from None
    return model.to(dtype).eval().requires_grad_(False)


def check(kind: str, directory: Path | str = DEFAULT_DIR) -> None:
    """ValueError naming the file when `kind`'s weights or config are present but unreadable
    (a truncated or foreign file), without loading the weights: the safetensors header and the
    JSON config are read. Missing files are not an error (they are retrained)."""
    from safetensors import safe_open

    directory = Path(directory)
    weights, meta = directory / f"{kind}.safetensors", directory / f"{kind}.json"
    retrain = f"retrain it with `sdo train {kind} --out {directory}`"
    if meta.exists():
        try:
            json.loads(meta.read_text())["config"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"model file {meta} is not a valid {kind} config ({error}); {retrain}") from None
    if weights.exists():
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error type for a bad or truncated header
            raise ValueError(f"model file {weights} cannot be read as {kind} weights ({error}); {retrain}") from None


def metrics(kind: str, directory: Path | str = DEFAULT_DIR) -> dict:
    """The metrics recorded when `kind` was trained."""
    return json.loads((Path(directory) / f"{kind}.json").read_text())["metrics"]

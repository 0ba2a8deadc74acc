"""Run records: the environment a number came from, and files written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

LIBRARIES = ("torch", "diffusers", "transformers", "torchmetrics", "peft", "snakemake", "numpy")


def device_name(device: torch.device | str) -> str:
    """A human description of the device, e.g. 'cpu (x86_64, 2 threads)' or the GPU's name, with
    "(TF32 on)" where float32 matrix products or convolutions may round to TF32 (cuDNN's
    default), which moves float32 fidelity numbers away from a CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        return torch.cuda.get_device_name(device) + (" (TF32 on)" if tf32 else "")
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device | str) -> dict:
    """Device (and, on a GPU, the physical one a job's slot claimed), library versions and the
    git commit of this checkout (None outside git)."""
    from evals.slots import physical_device

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "device": device_name(device),
        "physical_device": physical_device(device),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
    }


def write_atomic(path: Path | str, write) -> None:
    """Call `write(temporary_path)` and move the result to `path` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: Path | str, record: dict) -> None:
    """The record as strict JSON (NaN and infinities become null), written atomically."""
    text = json.dumps(strict(record), indent=2, allow_nan=False)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def strict(value):
    """`value` with what JSON cannot hold made plain: NaN and infinities as None, numpy and
    torch numbers and arrays as Python ones, paths and tuples as strings and lists."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_tensors(path: Path | str, **tensors: torch.Tensor) -> None:
    """Named tensors as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    write_atomic(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp))


def save_grid(path: Path | str, images: torch.Tensor, title: str = "") -> None:
    """A PNG grid of images in [-1, 1] (B, C, H, W), grey for one channel, RGB for three,
    eight to a row, drawn as one tiled image (one axes: cheap beside a plot per image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = (images.detach().float().cpu().clamp(-1, 1).numpy() + 1) / 2
    count, channels, height, width = images.shape
    columns = min(8, count)
    rows = -(-count // columns)
    pad = 2
    canvas = np.ones((rows * (height + pad) - pad, columns * (width + pad) - pad, channels), dtype=np.float32)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + pad), (index % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    figure, axis = plt.subplots(figsize=(columns * 0.9, rows * 0.9 + (0.4 if title else 0)))
    axis.axis("off")
    axis.imshow(canvas[..., 0] if channels == 1 else canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)

"""Image helpers any domain uses: Inception FID from local weights and a normal 95% interval over
per-sample values (image files are read by `sdo.images`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sdo.images import load_image_folder


def _rgb01(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1).cpu()


@torch.no_grad()
def inception_fid(samples: torch.Tensor, reference: torch.Tensor, weights: str | Path) -> float:
    """FID over Inception-v3 pool features (torchmetrics with torch-fidelity) from a local
    weights file; grey images become RGB in [0, 1]. Nothing is downloaded."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"Inception weights {weights} not found; Inception FID needs a local weights file")
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    metric.update(_rgb01(reference), real=True)
    metric.update(_rgb01(samples), real=False)
    return float(metric.compute())


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of a normal 95% interval over the values."""
    values = values.detach().double().flatten().cpu()
    half = 1.96 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), half


def inception_fid_folder(samples: torch.Tensor, reference_dir: str | Path, weights: str | Path) -> float:
    """Inception FID of `samples` against every image in `reference_dir`, resized to the
    samples' size."""
    return inception_fid(samples, load_image_folder(reference_dir, size=samples.shape[-2:]), weights)

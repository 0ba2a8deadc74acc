"""Image helpers any domain uses: loading image files, Inception FID from local weights, and a
normal 95% interval over per-sample values."""

from __future__ import annotations

import math
from pathlib import Path

import torch


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as RGB (1, 3, H, W) in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    return pixels.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def load_image_folder(directory: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Every image in `directory` (by name) as RGB (N, 3, H, W) in [-1, 1], each resized to
    `size` (bicubic, antialiased) when given; without it all must share one size."""
    directory = Path(directory)
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if directory.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no images in {directory}: it should be a folder of {', '.join(IMAGE_SUFFIXES)} files")
    images = [load_image(p) for p in paths]
    if size is not None:
        resize = torch.nn.functional.interpolate
        images = [resize(x, size=tuple(size), mode="bicubic", antialias=True).clamp(-1, 1) for x in images]
    return torch.cat(images)


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of a normal 95% interval over the values."""
    values = values.detach().double().flatten().cpu()
    half = 1.96 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), half


def inception_fid_folder(samples: torch.Tensor, reference_dir: str | Path, weights: str | Path) -> float:
    """Inception FID of `samples` against every image in `reference_dir`, resized to the
    samples' size."""
    return inception_fid(samples, load_image_folder(reference_dir, size=samples.shape[-2:]), weights)

"""Image files as tensors: RGB in [-1, 1], (N, 3, H, W), what decoded samples look like."""

from __future__ import annotations

from pathlib import Path

import torch

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


def pick(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` of `images` for a run of seed `seed`: image (seed * count + b) mod N for sample b,
    so every seed has its own images and a rerun the same ones."""
    index = (seed * count + torch.arange(count)) % len(images)
    return images[index]

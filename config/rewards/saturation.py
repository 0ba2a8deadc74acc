"""A user's own reward, as a file the configs name (`config/rewards/saturation.py:saturation`):
how colourful each image is. Any callable `images -> (B,) scores` works the same way; the
harness checks its gradient against finite differences before any run."""

import torch


def saturation(images: torch.Tensor) -> torch.Tensor:
    """The mean over pixels of each pixel's spread across its red, green and blue values, for
    RGB images (B, 3, H, W) in [-1, 1]; higher is more colourful."""
    rgb = (images.clamp(-1, 1) + 1) / 2
    return (rgb - rgb.mean(dim=1, keepdim=True)).pow(2).mean(dim=(1, 2, 3)).sqrt()

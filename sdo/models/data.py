"""The embedded dataset: scikit-learn's handwritten digits, 16x16, scaled to [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

IMAGE_SIZE = 16
NUM_CLASSES = 10
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 16, 16) in [-1, 1] and labels (N,) of the fixed `train` or `held_out` split.

    The split is a seeded permutation of all 1,797 images; the held-out part is the FID
    reference and never seen in training.
    """
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_held = int(round(HELD_OUT_FRACTION * len(labels)))
    index = order[n_held:] if split == "train" else order[:n_held]
    return images[index], labels[index]

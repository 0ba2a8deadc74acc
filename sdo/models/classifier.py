"""The embedded digit classifier: reward model and feature extractor for FID and diversity."""

from __future__ import annotations

import torch
from torch import nn

from sdo.models.data import NUM_CLASSES

DEFAULT_CONFIG = {"channels": [32, 64], "features": 64}


class DigitClassifier(nn.Module):
    """A small CNN on 16x16 images in [-1, 1]; smooth activations so rewards have useful gradients."""

    def __init__(self, config: dict = DEFAULT_CONFIG):
        super().__init__()
        self.config = config
        c1, c2 = config["channels"]
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c2, config["features"], 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(config["features"], NUM_CLASSES)

    @property
    def num_features(self) -> int:
        return self.config["features"]

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each convolution stage (for style Gram matrices)."""
        maps, x = [], images
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.SiLU):
                maps.append(x)
        return maps

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, num_features)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10)."""
        return self.head(self.body(images))

"""Rewards: callables `images -> per-sample scores` (higher is better) handed to tasks."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Reward = Callable[[torch.Tensor], torch.Tensor]


def classifier_log_prob(classifier: nn.Module, target: int) -> Reward:
    """log p(target | image) under the classifier: classifier guidance as in DOODL."""
    if not 0 <= target < 10:
        raise ValueError(f"target must be a digit 0-9, got {target}")

    def reward(images: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(classifier(images), dim=1)[:, target]

    return reward

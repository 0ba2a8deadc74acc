"""What model-based rewards share: a model run in the dtype of the images it is given, and Gram
matrices of feature maps (style rewards)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelReward:
    """A reward around a model, run in the dtype of the images it is given."""

    def __init__(self, model: nn.Module):
        self._models = {next(model.parameters()).dtype: model}

    def model_for(self, images: torch.Tensor) -> nn.Module:
        if images.dtype not in self._models:
            self._models[images.dtype] = copy.deepcopy(next(iter(self._models.values()))).to(images.dtype)
        return self._models[images.dtype]


def gram(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]

"""Quality metrics on generated digits, with the embedded classifier as feature extractor."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features as a torchmetrics feature extractor (B, d)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.to(next(self.classifier.parameters()).dtype))


@torch.no_grad()
def fid(samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module) -> float:
    """Frechet distance between classifier features of `samples` and `reference` (torchmetrics).
    Needs at least two samples; with fewer samples than feature dimensions it is biased upward,
    so report the sample count beside it."""
    if len(samples) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(samples)}")
    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier).cpu())
    metric.update(reference.cpu().float(), real=True)
    metric.update(samples.cpu().float(), real=False)
    return float(metric.compute())


@torch.no_grad()
def label_accuracy(samples: torch.Tensor, labels: torch.Tensor | int, classifier: nn.Module) -> float:
    """Fraction of samples the classifier assigns to `labels`."""
    predicted = classifier(samples.to(next(classifier.parameters()).dtype)).argmax(1).cpu()
    return float((predicted == torch.as_tensor(labels)).float().mean())


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of a normal 95% interval over the values."""
    values = values.detach().double().flatten().cpu()
    half = 1.96 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), half

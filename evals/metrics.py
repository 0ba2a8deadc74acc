"""Quality metrics on generated digits, with the embedded classifier as feature extractor: FID
and KID where there are enough samples, the distance to the nearest real digit (meaningful for
any number), diversity and label accuracy."""

from __future__ import annotations

import copy

import torch
from torch import nn

# torchmetrics is imported where FID or KID is computed: importing it costs seconds per process.

FID_MIN_SAMPLES = 100  # above the 64 feature dimensions, so the covariance has full rank
KID_MIN_SAMPLES = 50  # KID's subset size


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features as a torchmetrics feature extractor (B, d), on a
    float32 CPU copy of the classifier (the caller's stays where it is), each dimension
    standardised by its mean and spread over the `reference` images, so KID's cubic kernel
    (x.y / d + 1)^3 sits on its usual scale."""

    def __init__(self, classifier: nn.Module, reference: torch.Tensor):
        super().__init__()
        self.classifier = copy.deepcopy(classifier).cpu().float()
        self.num_features = classifier.num_features
        with torch.no_grad():
            features = self.classifier.features(reference.cpu().float())
        self.register_buffer("centre", features.mean(dim=0))
        self.register_buffer("scale", 1 / features.std(dim=0).clamp_min(1e-6))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.classifier.features(images.cpu().float()) - self.centre) * self.scale


@torch.no_grad()
def fid(samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module) -> float:
    """Frechet distance between classifier features of `samples` and `reference` (torchmetrics).
    Needs at least two samples; with fewer samples than feature dimensions it is biased upward,
    so report the sample count beside it."""
    if len(samples) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(samples)}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier, reference))
    metric.update(reference.cpu().float(), real=True)
    metric.update(samples.cpu().float(), real=False)
    return float(metric.compute())


@torch.no_grad()
def kid(
    samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module, subset_size: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance (mean, std over subsets) on the same features; unbiased at small sample
    counts, where FID is not. The subset size is capped by the sample count; the subsets are
    drawn from `seed`, so the same samples give the same numbers."""
    size = min(subset_size, len(samples), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples, got {len(samples)}")
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=ClassifierFeatures(classifier, reference), subset_size=size, subsets=50)
    metric.update(reference.cpu().float(), real=True)
    metric.update(samples.cpu().float(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@torch.no_grad()
def nearest_real_distance(samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """Per sample: the feature distance to its nearest reference image, divided by the median
    of that distance among the reference images themselves (leave-one-out). About 1 for
    samples as close to real data as real data is; much more for samples off the data (reward
    hacking that the reward does not see). Meaningful for any number of samples."""
    features = ClassifierFeatures(classifier, reference)
    real = features(reference).double()
    between_real = torch.cdist(real, real).fill_diagonal_(float("inf")).min(dim=1).values.median()
    return torch.cdist(features(samples).double(), real).min(dim=1).values / between_real


@torch.no_grad()
def diversity(samples: torch.Tensor, classifier: nn.Module, reference: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between the samples' (unit-scale) classifier features."""
    if len(samples) < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {len(samples)}")
    features = ClassifierFeatures(classifier, reference)(samples).double()
    distances = torch.cdist(features, features)
    return float(distances.sum() / (len(samples) * (len(samples) - 1)))


@torch.no_grad()
def label_accuracy(samples: torch.Tensor, labels: torch.Tensor | int, classifier: nn.Module) -> float:
    """Fraction of samples the classifier assigns to `labels`."""
    param = next(classifier.parameters())
    predicted = classifier(samples.to(param.device, param.dtype)).argmax(1).cpu()
    return float((predicted == torch.as_tensor(labels)).float().mean())


@torch.no_grad()
def distribution_distances(samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module) -> dict:
    """FID and KID where there are enough samples for them to mean something
    (FID_MIN_SAMPLES, KID_MIN_SAMPLES); below that the value is None and a note says why."""
    values = {"fid": None, "kid": None, "kid_std": None}
    if len(samples) >= FID_MIN_SAMPLES:
        values["fid"] = fid(samples, reference, classifier)
    else:
        values["fid_note"] = f"{len(samples)} samples < {FID_MIN_SAMPLES}: FID not computed (pool seeds)"
    if len(samples) >= KID_MIN_SAMPLES:
        values["kid"], values["kid_std"] = kid(samples, reference, classifier)
    else:
        values["kid_note"] = f"{len(samples)} samples < {KID_MIN_SAMPLES}: KID not computed (pool seeds)"
    return values

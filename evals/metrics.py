"""Quality metrics on generated digits, with the embedded classifier as feature extractor."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


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


def _rgb01(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1).cpu()


@torch.no_grad()
def inception_fid(samples: torch.Tensor, reference: torch.Tensor, weights: str | Path) -> float:
    """FID over Inception-v3 pool features (torchmetrics with torch-fidelity) from a local
    weights file; grey images become RGB in [0, 1]. Nothing is downloaded."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"Inception weights {weights} not found; Inception FID needs a local weights file")
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    metric.update(_rgb01(reference), real=True)
    metric.update(_rgb01(samples), real=False)
    return float(metric.compute())


@torch.no_grad()
def kid(samples: torch.Tensor, reference: torch.Tensor, classifier: nn.Module, subset_size: int = 50) -> tuple[float, float]:
    """Kernel distance (mean, std over subsets) on the same features; unbiased at small sample
    counts, where FID is not. The subset size is capped by the sample count."""
    size = min(subset_size, len(samples), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples, got {len(samples)}")
    metric = KernelInceptionDistance(feature=ClassifierFeatures(classifier).cpu(), subset_size=size, subsets=50)
    metric.update(reference.cpu().float(), real=True)
    metric.update(samples.cpu().float(), real=False)
    mean, std = metric.compute()
    return float(mean), float(std)


@torch.no_grad()
def diversity(samples: torch.Tensor, classifier: nn.Module) -> float:
    """Mean pairwise Euclidean distance between the samples' classifier features."""
    if len(samples) < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {len(samples)}")
    features = ClassifierFeatures(classifier)(samples).double()
    distances = torch.cdist(features, features)
    return float(distances.sum() / (len(samples) * (len(samples) - 1)))


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model_path: str) -> float:
    """torchmetrics' CLIPScore with a CLIP model from a local directory (no download)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"CLIP model directory {model_path} not found; CLIP score needs local weights")
    metric = CLIPScore(model_name_or_path=str(model_path))
    return float(metric((_rgb01(images) * 255).to(torch.uint8), prompts))


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


@torch.no_grad()
def summarize(
    samples: torch.Tensor,
    reward,
    classifier: nn.Module,
    reference: torch.Tensor,
    target: int | None = None,
    prompts: torch.Tensor | None = None,
    extra: dict | None = None,
    inception_weights: str | Path | None = None,
    clip_model: str | Path | None = None,
) -> dict:
    """Final metrics of a set of samples: reward (mean and 95% interval over samples), FID and
    KID against the held-out digits with the sample count, diversity, accuracy for the reward's
    target digit and alignment with each sample's prompt where those exist, and any extra
    evaluation-only metrics (name -> callable images -> per-sample scores). With local weights,
    also Inception FID and CLIP score (prompts 'a handwritten digit N', N the prompt or target)."""
    reward_mean, reward_ci = mean_ci95(reward(samples))
    kid_mean, kid_std = kid(samples, reference, classifier)
    summary = {
        "reward_mean": reward_mean,
        "reward_ci95": reward_ci,
        "fid": fid(samples, reference, classifier),
        "kid": kid_mean,
        "kid_std": kid_std,
        "fid_samples": len(samples),
        "fid_reference_samples": len(reference),
        "diversity": diversity(samples, classifier),
    }
    if target is not None:
        summary["target_accuracy"] = label_accuracy(samples, target, classifier)
    if prompts is not None:
        summary["prompt_alignment"] = label_accuracy(samples, prompts, classifier)
    for name, metric in (extra or {}).items():
        summary[f"metric:{name}"] = mean_ci95(metric(samples))[0]
    if inception_weights is not None:
        summary["fid_inception"] = inception_fid(samples, reference, inception_weights)
    digits = prompts.tolist() if prompts is not None else [target] * len(samples) if target is not None else None
    if clip_model is not None and digits is not None:
        summary["clip_score"] = clip_score(samples, [f"a handwritten digit {d}" for d in digits], clip_model)
    return summary

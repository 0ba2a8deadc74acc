"""Quality metrics on generated digits, with the embedded classifier as feature extractor."""

from __future__ import annotations

import copy
import math
from pathlib import Path

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


def clip_score(images: torch.Tensor, prompts: list[str], model_path: str) -> float:
    """CLIP score (`evals.image_rewards.clip_score_metric`, torchmetrics' definition) with a CLIP
    model from a local directory (no download), on images clamped to [-1, 1] as saved images
    are; grey images become RGB."""
    from evals.image_rewards import clip_score_metric

    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"CLIP model directory {model_path} not found; CLIP score needs local weights")
    return clip_score_metric(images.float().clamp(-1, 1).expand(-1, 3, -1, -1), prompts, model_path)


@torch.no_grad()
def label_accuracy(samples: torch.Tensor, labels: torch.Tensor | int, classifier: nn.Module) -> float:
    """Fraction of samples the classifier assigns to `labels`."""
    param = next(classifier.parameters())
    predicted = classifier(samples.to(param.device, param.dtype)).argmax(1).cpu()
    return float((predicted == torch.as_tensor(labels)).float().mean())


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of a normal 95% interval over the values."""
    values = values.detach().double().flatten().cpu()
    half = 1.96 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), half


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


def summarize(
    samples: torch.Tensor,
    *,
    reward,
    classifier: nn.Module,
    reference: torch.Tensor,
    target: int | None = None,
    prompts: list[int] | None = None,
    extra: dict | None = None,
    inception_weights: str | Path | None = None,
    clip_model: str | Path | None = None,
) -> dict:
    """Final metrics of a set of samples: reward (mean and 95% interval over samples), distance
    to the nearest real digit, FID and KID against the held-out digits where there are enough
    samples, diversity, accuracy for the reward's
    target digit and alignment with each sample's prompt where those exist, and any extra
    evaluation-only metrics (name -> callable images -> per-sample scores). With local weights,
    also Inception FID and CLIP score (prompts 'a handwritten digit N', N the prompt or target)."""
    reward_mean, reward_ci = mean_ci95(reward(samples))
    summary = {
        "reward_mean": reward_mean,
        "reward_ci95": reward_ci,
        "nn_distance": float(nearest_real_distance(samples, reference, classifier).mean()),
        "samples": len(samples),
        "fid_reference_samples": len(reference),
        "diversity": diversity(samples, classifier, reference),
    }
    summary.update(distribution_distances(samples, reference, classifier))
    if target is not None:
        summary["target_accuracy"] = label_accuracy(samples, target, classifier)
    if prompts is not None:
        summary["prompt_alignment"] = label_accuracy(samples, prompts, classifier)
    for name, metric in (extra or {}).items():
        summary[f"metric:{name}"] = mean_ci95(metric(samples))[0]
    if inception_weights is not None:
        summary["fid_inception"] = inception_fid(samples, reference, inception_weights)
    digits = prompts if prompts is not None else [target] * len(samples) if target is not None else None
    if clip_model is not None and digits is not None:
        summary["clip_score"] = clip_score(samples, [f"a handwritten digit {d}" for d in digits], clip_model)
    return summary

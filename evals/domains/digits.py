"""The embedded models' digits (1x16x16 in [-1, 1]): rewards built on the embedded classifier,
and metrics against the held-out digits. The guard against reward hacking is `nn_distance`,
the distance to the nearest real digit (lower is better)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evals import metrics
from evals.domains import Domain, register_domain
from evals.images import inception_fid, mean_ci95
from evals.rewards.digits import ClassifierLogProb
from sdo.models import store
from sdo.models.base import NULL_PROMPT
from sdo.models.data import load_split


@dataclass
class DigitsMetricOptions:
    """With local weights only: `inception_weights` (an Inception-v3 weights file: adds
    Inception FID, needs torch-fidelity) and `clip_model` (a CLIP directory: adds CLIP score
    against 'a handwritten digit N')."""

    inception_weights: str = ""
    clip_model: str = ""


@dataclass
class DigitsContext:
    classifier: torch.nn.Module
    held_out: torch.Tensor
    device: torch.device


def context(model, device) -> DigitsContext:
    """The classifier beside the model's weights and the held-out digits."""
    directory = getattr(model, "directory", store.DEFAULT_DIR)
    return DigitsContext(
        store.load("classifier", directory).to(device), load_split("held_out")[0], torch.device(device)
    )


def _digits(prompts: list[str] | None) -> list[int] | None:
    """Digit labels of the prompts, or None where any prompt is the null one."""
    if prompts is None or NULL_PROMPT in prompts:
        return None
    return [int(p) for p in prompts]


def setup(model, reward, context: DigitsContext, extra: dict, options: DigitsMetricOptions):
    """Tracked during runs: reward, distance to the nearest real digit and, for the classifier
    reward, target accuracy. Final: reward (mean and 95% interval over samples), that distance,
    FID and KID where there are enough samples, diversity, target accuracy and alignment with
    each sample's prompt where those exist, each evaluation-only metric, and with local weights
    Inception FID and CLIP score."""
    classifier, held_out = context.classifier, context.held_out
    target = reward.target if isinstance(reward, ClassifierLogProb) else None

    def monitor(images: torch.Tensor) -> dict:
        scores = {
            "reward": float(reward(images).mean()),
            "nn_distance": float(metrics.nearest_real_distance(images, held_out, classifier).mean()),
        }
        if target is not None:
            scores["target_accuracy"] = metrics.label_accuracy(images, target, classifier)
        return scores

    def summarize(samples: torch.Tensor, prompts: list[str] | None) -> dict:
        reward_mean, reward_ci = mean_ci95(reward(samples))
        summary = {
            "reward_mean": reward_mean,
            "reward_ci95": reward_ci,
            "nn_distance": float(metrics.nearest_real_distance(samples, held_out, classifier).mean()),
            "samples": len(samples),
            "fid_reference_samples": len(held_out),
            "diversity": metrics.diversity(samples, classifier, held_out),
            **metrics.distribution_distances(samples, held_out, classifier),
        }
        labels = _digits(prompts)
        if target is not None:
            summary["target_accuracy"] = metrics.label_accuracy(samples, target, classifier)
        if labels is not None:
            summary["prompt_alignment"] = metrics.label_accuracy(samples, labels, classifier)
        for name, metric in extra.items():
            summary[f"metric:{name}"] = mean_ci95(metric(samples))[0]
        if options.inception_weights:
            summary["fid_inception"] = inception_fid(samples, held_out, options.inception_weights)
        digits = labels if labels is not None else [target] * len(samples) if target is not None else None
        if options.clip_model and digits is not None:
            from evals.rewards.clip import clip_score

            if not Path(options.clip_model).is_dir():
                raise FileNotFoundError(
                    f"CLIP model directory {options.clip_model} not found; CLIP score needs local weights"
                )
            grey = samples.float().clamp(-1, 1).expand(-1, 3, -1, -1)
            summary["clip_score"] = clip_score(grey, [f"a handwritten digit {d}" for d in digits], options.clip_model)
        return summary

    return monitor, summarize


register_domain(
    Domain(
        "digits",
        DigitsMetricOptions,
        context,
        setup,
        bench_reward=("classifier", {"target": 3}),
        guard=("nn_distance", True),
    )
)

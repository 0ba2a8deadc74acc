"""The embedded default as an experiment setup: the digits model, its classifier-based rewards,
and metrics against the held-out digits."""

from __future__ import annotations

import torch

from evals import metrics
from evals.rewards import build_reward, load_callable, per_sample
from evals.setup import Setup
from sdo.models import store
from sdo.models.base import NULL_PROMPT
from sdo.models.data import load_split
from sdo.models.digits import EmbeddedDigits


def _digits(prompts: list[str] | None) -> list[int] | None:
    """Digit labels of the prompts, or None where any prompt is the null one."""
    if prompts is None or NULL_PROMPT in prompts:
        return None
    return [int(p) for p in prompts]


def embedded_setup(spec, device: torch.device) -> Setup:
    """Rewards by name (classifier, style, inpaint, superres, or a user's callable); tracked
    during runs: reward, distance to the nearest real digit and, for the classifier reward,
    target accuracy; final metrics from `metrics.summarize` against the held-out digits."""
    model = EmbeddedDigits.load(spec.models, device)
    classifier = store.load("classifier", spec.models).to(device)
    held_out, _ = load_split("held_out")
    observed = held_out[spec.reference_index : spec.reference_index + 1].to(device)
    reward = build_reward(spec.reward, classifier, spec.target, observed)
    target = spec.target if spec.reward == "classifier" else None
    extra = {name: per_sample(load_callable(name)) for name in spec.metrics}

    def monitor(images: torch.Tensor) -> dict:
        scores = {
            "reward": float(reward(images).mean()),
            "nn_distance": float(metrics.nearest_real_distance(images, held_out, classifier).mean()),
        }
        if target is not None:
            scores["target_accuracy"] = metrics.label_accuracy(images, target, classifier)
        return scores

    def summarize(samples: torch.Tensor, prompts: list[str] | None) -> dict:
        return metrics.summarize(
            samples,
            reward=reward,
            classifier=classifier,
            reference=held_out,
            target=target,
            prompts=_digits(prompts),
            extra=extra,
            inception_weights=spec.inception_weights,
            clip_model=spec.clip_model,
        )

    return Setup(model, reward, monitor, summarize)

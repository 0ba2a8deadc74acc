"""Rewards on the embedded model's digits (1x16x16 in [-1, 1]), built on the embedded
classifier and the held-out digits: `classifier` (log p(target), classifier guidance as in
DOODL), `style` (Gram matrices of classifier features against a held-out digit), `inpaint` and
`superres` (inverse problems: the top half, or a 4x downsampled view, of a held-out digit)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evals.rewards import register_reward
from evals.rewards.base import ModelReward, gram


class ClassifierLogProb(ModelReward):
    """log p(target | image) under the classifier: classifier guidance as in DOODL."""

    def __init__(self, classifier: nn.Module, target: int):
        if not 0 <= target < 10:
            raise ValueError(f"target must be a digit 0-9, got {target}")
        super().__init__(classifier)
        self.target = target

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model_for(images)(images), dim=1)[:, self.target]


class StyleSimilarity(ModelReward):
    """Minus the squared distance between Gram matrices of the classifier's feature maps and
    those of a reference image (style guidance, as the SDO authors do with CLIP features)."""

    def __init__(self, classifier: nn.Module, reference: torch.Tensor):
        super().__init__(classifier)
        self.reference = reference.detach()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model_for(images)
        ours = model.feature_maps(images)
        theirs = model.feature_maps(self.reference.to(images))
        return -sum(((gram(a) - gram(b)) ** 2).sum(dim=(1, 2)) for a, b in zip(ours, theirs))


class Observation:
    """Minus the mean squared error between an observed view of the sample and that view of a
    held-out digit: `inpaint` sees the top half, `superres` a 4x average-pooled image (an
    inverse problem, as in DMPlug)."""

    def __init__(self, reference: torch.Tensor, kind: str):
        if kind not in ("inpaint", "superres"):
            raise ValueError(f"observation kind must be 'inpaint' or 'superres', got {kind!r}")
        self.kind = kind
        self.observed = self.view(reference.detach())

    def view(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "superres":
            return F.avg_pool2d(images, 4)
        return images[..., : images.shape[-2] // 2, :]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return -((self.view(images) - self.observed.to(images)) ** 2).flatten(1).mean(1)


@dataclass
class TargetOptions:
    """`target`: the digit 0-9 whose log-probability is the reward."""

    target: int = 3


@dataclass
class ReferenceOptions:
    """`reference_index`: the held-out digit (0-358) whose style or view is matched."""

    reference_index: int = 0


def _reference(context, options: ReferenceOptions) -> torch.Tensor:
    held_out = context.held_out
    if not 0 <= options.reference_index < len(held_out):
        raise ValueError(f"reference_index must lie in 0..{len(held_out) - 1}, got {options.reference_index}")
    return held_out[options.reference_index : options.reference_index + 1].to(context.device)


@register_reward("classifier", "digits", TargetOptions)
def classifier_reward(context, options: TargetOptions):
    return ClassifierLogProb(context.classifier, options.target)


@register_reward("style", "digits", ReferenceOptions)
def style_reward(context, options: ReferenceOptions):
    return StyleSimilarity(context.classifier, _reference(context, options))


@register_reward("inpaint", "digits", ReferenceOptions)
def inpaint_reward(context, options: ReferenceOptions):
    return Observation(_reference(context, options), "inpaint")


@register_reward("superres", "digits", ReferenceOptions)
def superres_reward(context, options: ReferenceOptions):
    return Observation(_reference(context, options), "superres")

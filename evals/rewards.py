"""Rewards: callables `images -> per-sample scores` (higher is better) handed to tasks.

Built-ins score the embedded digits; a user's own reward is named as `package.module:function`
or `path/to/file.py:function` and loaded at run time. Every reward used for optimisation is
first checked for a working gradient (`check_differentiable`).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Reward = Callable[[torch.Tensor], torch.Tensor]
BUILT_IN = ("classifier", "style", "inpaint", "superres")


class _ModelReward:
    """A reward around a model, run in the dtype of the images it is given."""

    def __init__(self, model: nn.Module):
        self._models = {next(model.parameters()).dtype: model}

    def model_for(self, images: torch.Tensor) -> nn.Module:
        if images.dtype not in self._models:
            self._models[images.dtype] = copy.deepcopy(next(iter(self._models.values()))).to(images.dtype)
        return self._models[images.dtype]


class ClassifierLogProb(_ModelReward):
    """log p(target | image) under the classifier: classifier guidance as in DOODL."""

    def __init__(self, classifier: nn.Module, target: int):
        if not 0 <= target < 10:
            raise ValueError(f"target must be a digit 0-9, got {target}")
        super().__init__(classifier)
        self.target = target

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model_for(images)(images), dim=1)[:, self.target]


def _gram(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


class StyleSimilarity(_ModelReward):
    """Minus the squared distance between Gram matrices of the classifier's feature maps and
    those of a reference image (style guidance, as the SDO authors do with CLIP features)."""

    def __init__(self, classifier: nn.Module, reference: torch.Tensor):
        super().__init__(classifier)
        self.reference = reference.detach()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model_for(images)
        ours = model.feature_maps(images)
        theirs = model.feature_maps(self.reference.to(images))
        return -sum(((_gram(a) - _gram(b)) ** 2).sum(dim=(1, 2)) for a, b in zip(ours, theirs))


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


def load_callable(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function`."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ValueError(f"a custom callable is named as 'package.module:function' or 'file.py:function', got {spec!r}")
    if source.endswith(".py"):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"reward file {path} does not exist")
        module_name = f"_sdo_user_{path.stem}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(source)
    if not hasattr(module, name):
        raise AttributeError(f"{source} has no attribute {name!r}")
    function = getattr(module, name)
    if not callable(function):
        raise TypeError(f"{spec} is not callable")
    return function


def build_reward(spec: str, classifier: nn.Module, target: int, reference: torch.Tensor) -> Reward:
    """A built-in reward by name (`classifier`, `style`, `inpaint`, `superres`; `reference` is
    the style or observed image) or a user's callable by `module:function`."""
    if spec == "classifier":
        return ClassifierLogProb(classifier, target)
    if spec == "style":
        return StyleSimilarity(classifier, reference)
    if spec in ("inpaint", "superres"):
        return Observation(reference, spec)
    if ":" in spec:
        return per_sample(load_callable(spec))
    raise ValueError(f"unknown reward {spec!r}: use one of {BUILT_IN} or 'package.module:function'")


class NotDifferentiable(ValueError):
    """The reward's gradient is missing, wrong or not finite, so no estimator could optimise it."""


class RewardShapeError(ValueError):
    """The reward did not return one score per image."""


def per_sample(reward: Reward) -> Reward:
    """`reward` returning shape (B,): a (B, 1) result is flattened, anything else (another
    shape, a number, a numpy array) raises RewardShapeError naming what came back."""

    def scores(images: torch.Tensor) -> torch.Tensor:
        value = reward(images)
        expected = f"a torch tensor of shape ({len(images)},) or ({len(images)}, 1)"
        if not isinstance(value, torch.Tensor):
            raise RewardShapeError(f"a reward must return {expected}; got a {type(value).__module__}.{type(value).__name__}")
        if value.shape not in ((len(images),), (len(images), 1)):
            raise RewardShapeError(f"a reward must return {expected}; got shape {tuple(value.shape)}")
        return value.reshape(len(images))

    return scores


def check_differentiable(
    reward: Reward, images: torch.Tensor, directions: int = 3, step: float = 1e-5, tolerance: float = 1e-2, seed: int = 0
) -> float:
    """Compare autograd's directional derivatives of sum(reward) with central finite
    differences in float64 on random directions; return the worst relative error or raise
    NotDifferentiable naming what is wrong (no graph, non-finite scores or gradients, a blocked
    or saturated gradient) or RewardShapeError."""
    reward = per_sample(reward)
    images = images.detach().double().requires_grad_()
    scores = reward(images)
    if not bool(torch.isfinite(scores).all()):
        raise NotDifferentiable(f"the reward returned non-finite scores on the probe images: {scores.tolist()}")
    if not scores.requires_grad:
        raise NotDifferentiable("the reward's scores carry no graph: its gradient is blocked (no_grad, detach or a non-torch step)")
    (grad,) = torch.autograd.grad(scores.sum(), images, allow_unused=True)
    grad = torch.zeros_like(images) if grad is None else grad
    if not bool(torch.isfinite(grad).all()):
        raise NotDifferentiable("the reward's gradient is NaN or infinite on the probe images")
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for _ in range(directions):
            v = torch.randn(images.shape, generator=generator, dtype=images.dtype)
            numeric = float((reward(images + step * v).sum() - reward(images - step * v).sum()) / (2 * step))
            analytic = float((grad * v).sum())
            scale = max(abs(numeric), abs(analytic))
            if scale == 0:
                continue
            error = abs(numeric - analytic) / scale
            worst = max(worst, error)
            if not error <= tolerance:
                blocked = "autograd sees no gradient (a detach, or a clamp saturating everywhere) " if analytic == 0 else ""
                raise NotDifferentiable(
                    f"the reward's gradient is wrong: {blocked}directional derivative {analytic:.4g} by autograd vs "
                    f"{numeric:.4g} by finite differences (relative error {error:.2g} > {tolerance})"
                )
    if float(grad.abs().max()) == 0:
        raise NotDifferentiable("the reward's gradient is zero everywhere it was probed: it cannot guide optimisation")
    return worst

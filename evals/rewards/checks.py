"""What every reward must satisfy: one torch score per image, and a gradient autograd computes
correctly, checked against finite differences before any optimisation (a user's own callable
is found by `evals.plugins.load_callable`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Reward = Callable[[torch.Tensor], torch.Tensor]


class NotDifferentiable(ValueError):
    """The reward's gradient is missing, wrong or not finite, so no estimator could optimise it."""


class RewardShapeError(ValueError):
    """The reward did not return one differentiable torch score per image."""


def per_sample(reward: Reward) -> Reward:
    """`reward` returning shape (B,): a (B, 1) result is flattened, anything else (another
    shape, a number, a numpy array) raises RewardShapeError naming what came back."""

    def scores(images: torch.Tensor) -> torch.Tensor:
        value = reward(images)
        expected = (
            f"a torch tensor of shape ({len(images)},) or ({len(images)}, 1), computed with torch operations on the "
            "images so that it is differentiable"
        )
        if not isinstance(value, torch.Tensor):
            raise RewardShapeError(
                f"a reward must return {expected}; got a {type(value).__module__}.{type(value).__name__}"
            )
        if value.shape not in ((len(images),), (len(images), 1)):
            raise RewardShapeError(f"a reward must return {expected}; got shape {tuple(value.shape)}")
        return value.reshape(len(images))

    return scores


def check_differentiable(
    reward: Reward,
    images: torch.Tensor,
    directions: int = 3,
    step: float = 1e-5,
    tolerance: float = 1e-2,
    seed: int = 0,
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
        raise NotDifferentiable(
            "the reward's scores carry no graph: its gradient is blocked (no_grad, detach or a non-torch step)"
        )
    (grad,) = torch.autograd.grad(scores.sum(), images, allow_unused=True)
    grad = torch.zeros_like(images) if grad is None else grad
    if not bool(torch.isfinite(grad).all()):
        raise NotDifferentiable("the reward's gradient is NaN or infinite on the probe images")
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for _ in range(directions):
            v = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
            numeric = float((reward(images + step * v).sum() - reward(images - step * v).sum()) / (2 * step))
            analytic = float((grad * v).sum())
            scale = max(abs(numeric), abs(analytic))
            if scale == 0:
                continue
            error = abs(numeric - analytic) / scale
            worst = max(worst, error)
            if not error <= tolerance:
                blocked = (
                    "autograd sees no gradient (a detach, or a clamp saturating everywhere) " if analytic == 0 else ""
                )
                raise NotDifferentiable(
                    f"the reward's gradient is wrong: {blocked}directional derivative {analytic:.4g} by autograd vs "
                    f"{numeric:.4g} by finite differences (relative error {error:.2g} > {tolerance})"
                )
    if float(grad.abs().max()) == 0:
        raise NotDifferentiable("the reward's gradient is zero everywhere it was probed: it cannot guide optimisation")
    return worst

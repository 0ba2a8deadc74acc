"""Controlled generation: optimise the initial latents so their samples score higher."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdo.estimators import Estimator, Problem
from sdo.models.base import DiffusionModel
from sdo.tasks.loop import (
    Evaluator, Monitor, Reward, Settings, TaskResult, checked_start, image_loss, optimise, reward_monitor,
)
from sdo.tasks.registry import null_prompt, register_task


@dataclass
class LatentOptions:
    """`prompt`: the conditioning ('none': the null prompt); `renormalize`: project each latent
    back to norm sqrt(d) after every step, as DOODL does, to keep it typical of the Gaussian."""

    prompt: str = ""
    renormalize: bool = False

    def __post_init__(self):
        self.prompt = null_prompt(self.prompt)


@register_task("latent", wrt="latent", options=LatentOptions)
def optimise_latent(
    model: DiffusionModel, reward: Reward, estimator: Estimator, settings: Settings, options: LatentOptions,
    monitor: Monitor | None = None,
) -> TaskResult:
    """Adam on a batch of initial latents drawn from the settings' seed, conditioned on the
    prompt. The latents are the parameters, so their own samples are the evaluation (no fresh
    noise enters); `monitor` scores them (default: mean reward)."""
    generator = torch.Generator().manual_seed(settings.seed)
    latent = model.latent_batch(settings.batch, generator)
    cond = model.encode([options.prompt])
    start = latent.clone()
    chain = settings.chain(model)
    if settings.eta:
        chain.fix_noise(latent, generator)
    deviation = checked_start(estimator, chain, latent, cond, settings)
    optimizer = torch.optim.Adam([latent], lr=settings.lr or 0.05, betas=settings.betas)

    def renormalise():
        norms = latent.flatten(1).norm(dim=1).view(-1, *[1] * (latent.dim() - 1))
        latent.mul_(math.sqrt(latent[0].numel()) / norms)

    def images(z: torch.Tensor) -> torch.Tensor:
        return model.decode(estimator.sample(chain, z, cond))

    evaluate = Evaluator(lambda: images(latent), monitor or reward_monitor(reward), settings.eval_every, settings.iters)
    trace = optimise(
        estimator, lambda i: Problem(chain, latent, cond, "latent"), [latent], image_loss(model, reward), optimizer,
        settings.iters, after_step=renormalise if options.renormalize else None, evaluate=evaluate,
        audit=settings.audit, budget_bytes=settings.budget_bytes,
    )
    with torch.no_grad():
        final, baseline = images(latent), images(start)
    return TaskResult(trace, final, [options.prompt] * settings.batch, baseline, evaluate.rows, deviation)

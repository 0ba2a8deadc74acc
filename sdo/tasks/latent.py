"""Controlled generation: optimise the initial latents so their samples score higher."""

from __future__ import annotations

import math

import torch

from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import Reward, Settings, TaskResult, latent_batch, optimise


def optimise_latent(
    net, reward: Reward, estimator: Estimator, settings: Settings, *, prompt: int | None = None, renormalize: bool = False
) -> TaskResult:
    """Adam on a batch of initial latents drawn from the settings' seed, conditioned on digit `prompt`
    (None: the null prompt). `renormalize` projects each latent back to norm sqrt(d) after
    every step, as DOODL does, to keep it typical of the Gaussian."""
    generator = torch.Generator().manual_seed(settings.seed)
    latent = latent_batch(net, settings.batch, generator)
    cond = net.embed(torch.tensor([10 if prompt is None else prompt], device=latent.device)).detach()
    start = latent.clone()
    chain = settings.chain(net)
    if settings.eta:
        chain.fix_noise(latent, generator)
    optimizer = torch.optim.Adam([latent], lr=settings.lr or 0.05)

    def renormalise():
        norms = latent.flatten(1).norm(dim=1).view(-1, *[1] * (latent.dim() - 1))
        latent.mul_(math.sqrt(latent[0].numel()) / norms)

    rows = optimise(
        estimator,
        lambda i: Problem(chain, latent, cond, "latent"),
        [latent],
        reward,
        optimizer,
        settings.iters,
        after_step=renormalise if renormalize else None,
    )
    final, _ = chain.trajectory(latent, cond)
    baseline, _ = chain.trajectory(start, cond)
    prompts = None if prompt is None else torch.full((settings.batch,), prompt)
    return TaskResult(rows, final, prompts, baseline)

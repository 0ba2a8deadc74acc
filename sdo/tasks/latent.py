"""Controlled generation: optimise the initial latents so their samples score higher."""

from __future__ import annotations

import math

import torch

from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import Reward, TaskResult, latent_batch, make_chain, optimise


def optimise_latent(
    net,
    reward: Reward,
    estimator: Estimator,
    *,
    steps: int,
    iters: int,
    batch: int = 8,
    prompt: int | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    lr: float = 0.05,
    renormalize: bool = False,
    seed: int = 0,
) -> TaskResult:
    """Adam on a batch of initial latents, drawn from `seed`, conditioned on digit `prompt`
    (None: the null prompt). `renormalize` projects each latent back to norm sqrt(d) after
    every step, as DOODL does, to keep it typical of the Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    latent = latent_batch(net, batch, generator)
    cond = net.embed(torch.tensor([10 if prompt is None else prompt], device=latent.device)).detach()
    start = latent.clone()
    chain = make_chain(net, steps, guidance, eta)
    if eta:
        chain.fix_noise(latent, generator)
    optimizer = torch.optim.Adam([latent], lr=lr)

    def renormalise():
        norms = latent.flatten(1).norm(dim=1).view(-1, *[1] * (latent.dim() - 1))
        latent.mul_(math.sqrt(latent[0].numel()) / norms)

    rows = optimise(
        estimator,
        lambda i: Problem(chain, latent, cond, "latent"),
        [latent],
        reward,
        optimizer,
        iters,
        after_step=renormalise if renormalize else None,
    )
    final, _ = chain.trajectory(latent, cond)
    baseline, _ = chain.trajectory(start, cond)
    prompts = None if prompt is None else torch.full((batch,), prompt)
    return TaskResult(rows, final, prompts, baseline)

"""Prompt-embedding inversion: optimise one conditioning sequence so its samples score higher."""

from __future__ import annotations

import torch

from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import Reward, Settings, TaskResult, latent_batch, optimise


def optimise_conditioning(
    net, reward: Reward, estimator: Estimator, settings: Settings, *, prompt: int | None = None, eval_samples: int = 100
) -> TaskResult:
    """Adam on a single embedding sequence shared by the batch (as in textual inversion and
    AdjointDPM's vocabulary expansion), starting from digit `prompt`'s (None: the null
    prompt's). Each iteration draws fresh latents, so the embedding must work for any noise;
    the final samples come from `eval_samples` latents never used in training."""
    generator = torch.Generator().manual_seed(settings.seed)
    device = next(net.parameters()).device
    cond = net.embed(torch.tensor([10 if prompt is None else prompt], device=device)).detach().clone()
    start = cond.clone()
    chain = settings.chain(net)
    optimizer = torch.optim.Adam([cond], lr=settings.lr or 0.05)

    def problem_at(i: int) -> Problem:
        latent = latent_batch(net, settings.batch, generator)
        if settings.eta:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, cond, "cond")

    rows = optimise(estimator, problem_at, [cond], reward, optimizer, settings.iters)
    evaluation = torch.Generator().manual_seed(settings.seed + 10_000)
    latent = latent_batch(net, eval_samples, evaluation)
    if settings.eta:
        chain.fix_noise(latent, evaluation)
    final, _ = chain.trajectory(latent, cond)
    baseline, _ = chain.trajectory(latent, start)
    return TaskResult(rows, final, None, baseline)

"""Prompt-embedding inversion: optimise one conditioning sequence so its samples score higher."""

from __future__ import annotations

import torch

from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import Reward, TaskResult, latent_batch, make_chain, optimise


def optimise_conditioning(
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
    eval_samples: int = 100,
    seed: int = 0,
) -> TaskResult:
    """Adam on a single embedding sequence shared by the batch (as in textual inversion and
    AdjointDPM's vocabulary expansion), starting from digit `prompt`'s (None: the null
    prompt's). Each iteration draws fresh latents, so the embedding must work for any noise;
    the final samples come from `eval_samples` latents never used in training."""
    generator = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    cond = net.embed(torch.tensor([10 if prompt is None else prompt], device=device)).detach().clone()
    start = cond.clone()
    chain = make_chain(net, steps, guidance, eta)
    optimizer = torch.optim.Adam([cond], lr=lr)

    def problem_at(i: int) -> Problem:
        latent = latent_batch(net, batch, generator)
        if eta:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, cond, "cond")

    rows = optimise(estimator, problem_at, [cond], reward, optimizer, iters)
    evaluation = torch.Generator().manual_seed(seed + 10_000)
    latent = latent_batch(net, eval_samples, evaluation)
    if eta:
        chain.fix_noise(latent, evaluation)
    final, _ = chain.trajectory(latent, cond)
    baseline, _ = chain.trajectory(latent, start)
    return TaskResult(rows, final, None, baseline)

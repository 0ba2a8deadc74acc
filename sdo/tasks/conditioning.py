"""Prompt-embedding inversion: optimise one conditioning sequence so its samples score higher."""

from __future__ import annotations

import torch

from sdo.estimators import Estimator, Problem
from sdo.models.base import NULL_PROMPT, DiffusionModel
from sdo.tasks.loop import (
    Evaluator, Monitor, Reward, Settings, TaskResult, held_out, image_loss, optimise, reward_monitor,
)

WRT = "cond"


def optimise_conditioning(
    model: DiffusionModel,
    reward: Reward,
    estimator: Estimator,
    settings: Settings,
    *,
    prompt: str = NULL_PROMPT,
    eval_samples: int = 100,
    monitor: Monitor | None = None,
) -> TaskResult:
    """Adam on a single conditioning sequence shared by the batch (as in textual inversion and
    AdjointDPM's vocabulary expansion), starting from `prompt`'s encoding. Each iteration draws
    fresh latents, so the conditioning must work for any noise; progress is monitored on
    `settings.monitor_samples` fixed held-out latents, and the final samples come from
    `eval_samples` other latents never used in training."""
    generator = torch.Generator().manual_seed(settings.seed)
    cond = model.encode([prompt]).detach().clone()
    start = cond.clone()
    chain = settings.chain(model)
    optimizer = torch.optim.Adam([cond], lr=settings.lr or 0.05, betas=settings.betas)

    def problem_at(i: int) -> Problem:
        latent = model.latent_batch(settings.batch, generator)
        if settings.eta:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, cond, WRT)

    watched, watch_chain = held_out(model, settings, settings.monitor_samples, offset=20_000)
    evaluate = Evaluator(
        lambda: model.decode(estimator.sample(watch_chain, watched, cond)),
        monitor or reward_monitor(reward),
        settings.eval_every,
        settings.iters,
    )
    trace = optimise(estimator, problem_at, [cond], image_loss(model, reward), optimizer, settings.iters, evaluate=evaluate)
    latent, final_chain = held_out(model, settings, eval_samples, offset=10_000)
    with torch.no_grad():
        final = model.decode(estimator.sample(final_chain, latent, cond))
        baseline = model.decode(estimator.sample(final_chain, latent, start))
    return TaskResult(trace, final, None, baseline, evaluate.rows)

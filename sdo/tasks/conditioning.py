"""Prompt-embedding inversion: optimise one conditioning sequence so its samples score higher."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdo import conditioning
from sdo.estimators import Estimator, NotApplicable, Problem
from sdo.models.base import DiffusionModel
from sdo.tasks.loop import (
    Evaluator,
    Monitor,
    Reward,
    Settings,
    TaskResult,
    checked_start,
    held_out,
    image_loss,
    optimise,
    reward_monitor,
)
from sdo.tasks.registry import null_prompt, refuse_partial_chain, register_task


@dataclass
class ConditioningOptions:
    """`prompt`: the starting conditioning ('none': the null prompt); `eval_samples`: held-out
    samples for the final metrics; `monitor_samples`: held-out samples per evaluation."""

    prompt: str = ""
    eval_samples: int = 100
    monitor_samples: int = 32
    start_step: int = 0

    def __post_init__(self):
        self.prompt = null_prompt(self.prompt)
        refuse_partial_chain("conditioning", self.start_step)


@register_task("conditioning", wrt="cond", options=ConditioningOptions)
def optimise_conditioning(
    model: DiffusionModel,
    reward: Reward,
    estimator: Estimator,
    settings: Settings,
    options: ConditioningOptions,
    monitor: Monitor | None = None,
) -> TaskResult:
    """Adam on the prompt embeddings of one conditioning shared by the batch (as in textual
    inversion and AdjointDPM's vocabulary expansion), starting from the prompt's encoding; a
    model's other conditioning tensors (pooled embeddings, ids) stay as the prompt gives them.
    Each iteration draws fresh latents, so the conditioning must work for any noise; progress
    is monitored on fixed held-out latents, and the final samples come from other latents never
    used in training."""
    if not model.conditional:
        raise NotApplicable(f"{model.options.get('model')!r} is unconditional: it has no conditioning to optimise")
    generator = torch.Generator().manual_seed(settings.seed)
    encoded = conditioning.detach(model.encode([options.prompt]))
    embeddings = conditioning.primary(encoded).clone().requires_grad_()
    start = conditioning.with_primary(encoded, conditioning.primary(encoded).clone())
    cond = conditioning.with_primary(encoded, embeddings)
    chain = settings.chain(model)
    latent, final_chain = held_out(model, settings, options.eval_samples, offset=10_000)
    deviation = checked_start(estimator, final_chain, latent, start, settings)
    optimizer = torch.optim.Adam([embeddings], lr=settings.lr or 0.05, betas=settings.betas)

    def problem_at(i: int) -> Problem:
        latent = model.latent_batch(settings.batch, generator)
        if not chain.deterministic:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, cond, "cond")

    watched, watch_chain = held_out(model, settings, options.monitor_samples, offset=20_000)
    evaluate = Evaluator(
        lambda: model.decode(estimator.sample(watch_chain, watched, cond)),
        monitor or reward_monitor(reward),
        settings.eval_every,
        settings.iters,
    )
    trace = optimise(
        estimator,
        problem_at,
        [embeddings],
        image_loss(model, reward),
        optimizer,
        settings.iters,
        evaluate=evaluate,
        audit=settings.audit,
        budget_bytes=settings.budget_bytes,
        precision=settings.precision,
        on_iteration=getattr(reward, "at_iteration", None),
    )
    with torch.no_grad():
        final = model.decode(estimator.sample(final_chain, latent, cond))
        initial = model.decode(estimator.sample(final_chain, latent, start))
    return TaskResult(trace, final, None, initial, evaluate.rows, deviation)

"""Reward fine-tuning of the network's weights (DRaFT / AlignProp style), LoRA or full."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdo import conditioning
from sdo.estimators import Estimator, Problem
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
from sdo.tasks.registry import refuse_partial_chain, register_task


@dataclass
class FinetuneOptions:
    """`lora_rank`: rank of the LoRA adapters (0: every weight of the network); `prompts`: the
    prompts drawn for training and cycled for evaluation (None: the model's); `eval_samples`:
    held-out samples for the final metrics; `monitor_samples`: held-out samples per evaluation."""

    lora_rank: int = 4
    prompts: list[str] | None = None
    eval_samples: int = 100
    monitor_samples: int = 32
    start_step: int = 0

    def __post_init__(self):
        refuse_partial_chain("finetune", self.start_step)


@register_task("finetune", wrt="weights", options=FinetuneOptions)
def finetune(
    model: DiffusionModel,
    reward: Reward,
    estimator: Estimator,
    settings: Settings,
    options: FinetuneOptions,
    monitor: Monitor | None = None,
) -> TaskResult:
    """AdamW on the trainable weights of `model.with_lora(lora_rank, settings.seed)`; each
    iteration samples fresh noise and prompts drawn from the prompts, and the reward scores the
    samples. Progress is monitored on fixed held-out latents; the final samples (and the base
    model's, for drift) come from other latents, prompts cycling through the list."""
    prompts = tuple(options.prompts or model.prompts)
    if not prompts:
        raise ValueError("finetune needs prompts: the model lists none and none were given")
    tuned = model.with_lora(options.lora_rank, seed=settings.seed)
    params = [p for p in tuned.net.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(settings.seed)
    chain = settings.chain(tuned)

    def cycling(count: int) -> list[str]:
        return [prompts[i % len(prompts)] for i in range(count)]

    latent, final_chain = held_out(tuned, settings, options.eval_samples, offset=10_000)
    shown = cycling(options.eval_samples)
    cond = conditioning.detach(model.encode(shown))
    base = settings.chain(model)  # the same noise through the untouched model: the drift
    base.noise = final_chain.noise
    deviation = checked_start(estimator, base, latent, cond, settings)
    optimizer = torch.optim.AdamW(params, lr=settings.lr or 1e-3, betas=settings.betas, weight_decay=0.0)

    def problem_at(i: int) -> Problem:
        latent = model.latent_batch(settings.batch, generator)
        drawn = torch.randint(0, len(prompts), (settings.batch,), generator=generator).tolist()
        if not chain.deterministic:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, model.encode([prompts[j] for j in drawn]), "weights")

    watched, watch_chain = held_out(tuned, settings, options.monitor_samples, offset=20_000)
    watched_cond = conditioning.detach(model.encode(cycling(len(watched))))
    evaluate = Evaluator(
        lambda: tuned.decode(estimator.sample(watch_chain, watched, watched_cond)),
        monitor or reward_monitor(reward),
        settings.eval_every,
        settings.iters,
    )
    trace = optimise(
        estimator,
        problem_at,
        params,
        image_loss(tuned, reward),
        optimizer,
        settings.iters,
        evaluate=evaluate,
        audit=settings.audit,
        budget_bytes=settings.budget_bytes,
        precision=settings.precision,
        on_iteration=getattr(reward, "at_iteration", None),
    )
    with torch.no_grad():
        final = tuned.decode(estimator.sample(final_chain, latent, cond))
        initial = model.decode(estimator.sample(base, latent, cond))
    return TaskResult(trace, final, shown, initial, evaluate.rows, deviation)

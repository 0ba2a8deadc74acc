"""Reward fine-tuning of the network's weights (DRaFT / AlignProp style), LoRA or full."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model

from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import Reward, Settings, TaskResult, latent_batch, optimise

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def trainable_copy(net, lora_rank: int):
    """A copy of `net` whose only trainable weights are LoRA adapters of rank `lora_rank` on
    the UNet's attention and convolutions (peft), or, for rank 0, all UNet weights."""
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0: all UNet weights), got {lora_rank}")
    net = copy.deepcopy(net).requires_grad_(False)
    if lora_rank == 0:
        net.unet.requires_grad_(True)
        return net
    config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    net.unet = inject_adapter_in_model(config, net.unet)
    for name, param in net.unet.named_parameters():
        param.requires_grad_("lora_" in name)
    return net


def finetune(
    net, reward: Reward, estimator: Estimator, settings: Settings, *, lora_rank: int = 4, eval_samples: int = 100
) -> TaskResult:
    """AdamW on the trainable weights; each iteration samples fresh noise and prompt digits,
    and the reward scores the samples. The final samples (and the base model's, for drift)
    come from `eval_samples` latents never used in training, prompts cycling through 0-9."""
    tuned = trainable_copy(net, lora_rank)
    params = [p for p in tuned.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(settings.seed)
    device = params[0].device
    chain = settings.chain(tuned)
    optimizer = torch.optim.AdamW(params, lr=settings.lr or 1e-3, weight_decay=0.0)

    def problem_at(i: int) -> Problem:
        latent = latent_batch(net, settings.batch, generator)
        labels = torch.randint(0, 10, (settings.batch,), generator=generator).to(device)
        if settings.eta:
            chain.fix_noise(latent, generator)
        return Problem(chain, latent, net.embed(labels).detach(), "weights")

    rows = optimise(estimator, problem_at, params, reward, optimizer, settings.iters)
    evaluation = torch.Generator().manual_seed(settings.seed + 10_000)
    latent = latent_batch(net, eval_samples, evaluation)
    prompts = torch.arange(eval_samples) % 10
    if settings.eta:
        chain.fix_noise(latent, evaluation)
    cond = net.embed(prompts.to(device)).detach()
    final, _ = chain.trajectory(latent, cond)
    base = settings.chain(net)  # the same noise through the untouched model: the drift
    base.noise = chain.noise
    baseline, _ = base.trajectory(latent, cond)
    return TaskResult(rows, final, prompts, baseline)

"""The harness's yardstick: full backpropagation and the shortcut as plain loops over the
diffusers scheduler's own `step` and the raw network, with nothing of the project's chain,
meters or estimators in between.

Rule: `full` calls the (guided) network and `scheduler.step` T times with autograd on and
backpropagates the loss; `shortcut` keeps the graph of the first network call only (to the
latent, the conditioning or the weights), runs every later call without a graph on a detached
input and keeps applying `scheduler.step` to the tensor that carries the graph, as the SDO
authors' released code does. The bench times these interleaved with the project's `full` and
`shortcut` on the same problem; the ratio says what the harness itself adds to a gradient.
Cost: T forward + T backward (`full`), T forward + 1 backward (`shortcut`).
"""

from __future__ import annotations

import torch

from sdo import conditioning
from sdo.estimators import Problem
from sdo.samplers.base import timestep_dtype

RULES = ("full", "shortcut")


def _guided(chain, z: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
    """Classifier-free guidance written out: one batched call on (null, cond) when guided."""
    t = t.to(device=z.device, dtype=timestep_dtype(z)).expand(z.shape[0])  # the scheduler keeps its own on the CPU
    cond = conditioning.expand(cond, z.shape[0])
    if chain.cfg_scale == 1.0:
        return chain.net(z, t, cond)
    both = conditioning.cat(conditioning.expand(chain.null_cond, z.shape[0]), cond)
    uncond, conditional = chain.net(torch.cat([z, z]), torch.cat([t, t]), both).chunk(2)
    return uncond + chain.cfg_scale * (conditional - uncond)


def plain_gradient(rule: str, problem: Problem, loss) -> list[torch.Tensor]:
    """The gradient of `loss(sample)` by the plain loop `rule` ('full' or 'shortcut')."""
    if rule not in RULES:
        raise ValueError(f"plain loop rule must be one of {RULES}, got {rule!r}")
    chain = problem.chain
    scheduler = chain.diffusers_scheduler()
    z = problem.latent * float(getattr(scheduler, "init_noise_sigma", 1.0))
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)  # flow matching's Euler has none
    for k, t in enumerate(scheduler.timesteps):
        if rule == "full" or k == 0:
            out = _guided(chain, scale(z, t), t, problem.cond)
        else:
            with torch.no_grad():
                out = _guided(chain, scale(z.detach(), t), t, problem.cond)
        z = scheduler.step(out, t, z).prev_sample
    return list(torch.autograd.grad(loss(z), problem.params, allow_unused=True, materialize_grads=True))


def plain_rule_for(method: str, options: dict, chain=None) -> str | None:
    """The plain loop an estimator variant is the project's version of: `full` without
    checkpointing, and the shortcut at its first step, on a deterministic single-step chain whose
    diffusers scheduler steps as it does; None for every other variant or chain."""
    if chain is not None and (not chain.deterministic or chain.order > 1 or not chain.scheduler_class):
        return None
    if method == "full" and not options.get("checkpoint", False):
        return "full"
    if method == "shortcut" and options.get("at", "first") == "first":
        return "shortcut"
    return None

"""Controlled generation: optimise the initial latents, or a state part-way down the chain, so
their samples score higher.

With `start_step` k0 > 0 the optimised parameter is the state z_k0 and every iteration runs only
the remaining T - k0 steps, as the SDO authors' released scripts do. z_k0 comes from `init`:
`sample` (k0 steps without a graph from the seed's initial noise) or `invert` (real images
mapped to states, then k0 steps of the sampler's inversion; for the embedded digits models the
held-out real digits, sample b of seed s inverting digit s * batch + b, never one used in
training). The warm-up is paid once per run and reported apart (`TaskResult.warmup`). An
inverted state sits at the noise level of inverse step k0 - 1 while the chain denoises it from
its own step k0, as the scripts do: the warm-up names both timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdo.estimators import Estimator, Problem
from sdo.models.base import DiffusionModel
from sdo.tasks.loop import (
    Evaluator,
    Monitor,
    Reward,
    Settings,
    TaskResult,
    checked_start,
    image_loss,
    optimise,
    reward_monitor,
)
from sdo.tasks.registry import null_prompt, register_task
from sdo.timing import timed

INITS = ("sample", "invert")


@dataclass
class LatentOptions:
    """`prompt`: the conditioning ('none': the null prompt); `renormalize`: project each latent
    back to norm sqrt(d) after every step, as DOODL does, to keep it typical of the Gaussian;
    `start_step`: k0, the step whose state is optimised (0: the initial noise); `init`: where
    z_k0 comes from (`sample` or `invert`); `init_images`: the folder of real images `invert`
    maps to states (empty: the model's own real images, the held-out digits for the embedded
    models)."""

    prompt: str = ""
    renormalize: bool = False
    start_step: int = 0
    init: str = "sample"
    init_images: str = ""

    def __post_init__(self):
        self.prompt = null_prompt(self.prompt)
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0 (0: optimise the initial noise), got {self.start_step}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "invert" and self.start_step == 0:
            raise ValueError("init=invert needs start_step >= 1: the state inverted k0 steps is what is optimised")


def starting_state(model: DiffusionModel, chain, cond, noise: torch.Tensor, options: LatentOptions, seed: int):
    """(the tail chain from k0, its starting state z_k0, the warm-up record): the chain itself
    and the noise when k0 = 0; else k0 sampled or inverted steps, timed and counted once."""
    k0 = options.start_step
    if k0 == 0:
        return chain, noise, {}
    if k0 >= chain.steps:
        raise ValueError(f"start_step must lie in 0..{chain.steps - 1} (T = {chain.steps}), got {k0}")
    device = noise.device
    if options.init == "sample":
        seconds, (state, past) = timed(lambda: chain.warm_up(noise, cond, k0), device)
        warmup = {"warmup_nfe_forward": chain.meter.forward, "warmup_seconds": seconds}
        chain.meter.forward = 0
        return chain.tail(k0, past), state, warmup
    if not chain.capabilities.inversion:
        raise ValueError(f"init=invert runs the sampler backwards; {chain.name} has no inversion")
    images = model.real_images(len(noise), seed, options.init_images).to(device, model.dtype)
    inversion = chain.inversion(k0)

    def invert():
        with torch.no_grad():
            return inversion.trajectory(model.encode_images(images), cond)[0]

    seconds, state = timed(invert, device)
    warmup = {
        "warmup_nfe_forward": inversion.meter.forward,
        "warmup_seconds": seconds,
        "inverted_to_timestep": float(inversion.timesteps[-1]),
        "denoised_from_timestep": float(chain.timesteps[k0]),
    }
    return chain.tail(k0), state, warmup


@register_task("latent", wrt="latent", options=LatentOptions)
def optimise_latent(
    model: DiffusionModel,
    reward: Reward,
    estimator: Estimator,
    settings: Settings,
    options: LatentOptions,
    monitor: Monitor | None = None,
) -> TaskResult:
    """Adam on a batch of initial latents drawn from the settings' seed (or on the states z_k0
    reached from them, see the module docstring), conditioned on the prompt. The latents are
    the parameters, so their own samples are the evaluation (no fresh noise enters); `monitor`
    scores them (default: mean reward and its spread)."""
    generator = torch.Generator().manual_seed(settings.seed)
    noise = model.latent_batch(settings.batch, generator)
    cond = model.encode([options.prompt])
    chain = settings.chain(model)
    if not chain.deterministic:
        chain.fix_noise(noise, generator)
    chain, latent, warmup = starting_state(model, chain, cond, noise, options, settings.seed)
    latent = latent.detach().clone()
    start = latent.clone()
    deviation = checked_start(estimator, chain, latent, cond, settings)
    optimizer = torch.optim.Adam([latent], lr=settings.lr or 0.05, betas=settings.betas)

    def renormalise():
        norms = latent.flatten(1).norm(dim=1).view(-1, *[1] * (latent.dim() - 1))
        latent.mul_(math.sqrt(latent[0].numel()) / norms)

    def images(z: torch.Tensor) -> torch.Tensor:
        return model.decode(estimator.sample(chain, z, cond))

    evaluate = Evaluator(lambda: images(latent), monitor or reward_monitor(reward), settings.eval_every, settings.iters)
    trace = optimise(
        estimator,
        lambda i: Problem(chain, latent, cond, "latent"),
        [latent],
        image_loss(model, reward),
        optimizer,
        settings.iters,
        after_step=renormalise if options.renormalize else None,
        evaluate=evaluate,
        audit=settings.audit,
        budget_bytes=settings.budget_bytes,
        precision=settings.precision,
        on_iteration=getattr(reward, "at_iteration", None),
    )
    with torch.no_grad():
        final, initial = images(latent), images(start)
    return TaskResult(trace, final, [options.prompt] * settings.batch, initial, evaluate.rows, deviation, warmup)

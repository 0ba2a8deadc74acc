"""A sampling chain: T steps, each affine in the state given the network's prediction, written
as pure functions so every estimator can replay, invert or differentiate any single step.

Notation (every sampler file uses it, then relates it to its papers'):

    k            step index in sampling order, 0..T-1
    z_k          chain state before step k; z_0 is the initial latent, z_T the sample
    t_k          the network's timestep at state k (the diffusers scheduler's `timesteps`)
    out_k        the network's prediction out(z_k, t_k, c), classifier-free guided: the noise
                 for DDIM, the velocity for flow matching
    a_k, b_k     step k's coefficients:    z_{k+1} = a_k z_k + b_k out_k + s_k noise_k
    s_k          the standard deviation of step k's fresh noise (0: a deterministic step)
    p_k, q_k     the clean sample predicted at state k:    x0_hat_k = p_k z_k + q_k out_k
    alpha_k, n_k signal and noise level of state k:   z_k ~ alpha_k x_0 + n_k noise

A sampler (one file each, registered by name) computes these numbers in float64 from its
diffusers scheduler, so its update equals the scheduler's `step`. With s_k > 0 the noise is
drawn once per run (`fix_noise`), so the chain stays a deterministic function of the latent,
the conditioning and the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from sdo import conditioning
from sdo.conditioning import Cond


def timestep_dtype(z: torch.Tensor) -> torch.dtype:
    """The dtype the network's timesteps take beside states `z`: float32 for bf16 and fp16
    states (bf16 holds only multiples of 4 above 512: 981 would reach the network as 980, where
    the diffusers pipelines pass int64 or float32 timesteps), otherwise the states' own."""
    return torch.float32 if z.dtype in (torch.bfloat16, torch.float16) else z.dtype


@dataclass
class Meter:
    """Network evaluations of the guided network: forward calls, backward passes, and which
    steps ran with a graph. With classifier-free guidance one call is one batched network run
    on twice the batch. Counting costs integer increments and one identity autograd node per
    graph step (about 9 microseconds a step on a CPU, against milliseconds for a network call)."""

    forward: int = 0
    backward: int = 0
    graph_steps: list[int] = field(default_factory=list)


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, meter):
        ctx.meter = meter
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.meter.backward += 1
        return grad, None


@dataclass(frozen=True)
class Step:
    """The numbers of one step (see the notation above)."""

    a: float
    b: float
    s: float
    p: float
    q: float


class Chain:
    """T steps of `net(x, t, cond) -> out` with optional classifier-free guidance.

    `steps_` are the T `Step`s, `timesteps` the T network timesteps, `levels` the T + 1
    (alpha_k, n_k). `null_cond` is the unconditional conditioning of guidance (batch 1 or
    like `cond`); `cfg_scale` 1 uses `cond` alone. Subclasses (the samplers) compute the
    numbers and say how diffusers builds the same schedule (`diffusers_scheduler`).
    """

    name: ClassVar[str]
    stochastic: ClassVar[bool] = False  # whether the sampler can draw fresh noise (s_k > 0)

    def __init__(
        self,
        net: nn.Module,
        timesteps: list[float],
        steps: list[Step],
        levels: list[tuple[float, float]],
        cfg_scale: float = 1.0,
        null_cond: Cond | None = None,
    ):
        if not steps:
            raise ValueError("a chain needs at least one step")
        if cfg_scale != 1.0 and null_cond is None:
            raise ValueError(f"cfg_scale {cfg_scale} needs a null_cond for the unconditional prediction")
        if any(step.a == 0 for step in steps):
            raise ValueError("every step must scale its state by a non-zero a_k")
        self.net, self.cfg_scale, self.null_cond = net, cfg_scale, null_cond
        self.timesteps, self.coefficients, self.levels = list(timesteps), list(steps), list(levels)
        self.steps = len(steps)
        self.noise: list[torch.Tensor] | None = None
        self.meter = Meter()

    def diffusers_scheduler(self):
        """diffusers' own scheduler set to this chain's steps: the reference its update equals."""
        raise NotImplementedError

    @property
    def deterministic(self) -> bool:
        return not any(step.s for step in self.coefficients)

    def fix_noise(self, like: torch.Tensor, generator: torch.Generator) -> None:
        """Draw the per-step noise once, shaped like the latent (a stochastic chain needs it)."""
        self.noise = [
            torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device) for _ in range(self.steps)
        ]

    def guided(self, z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Classifier-free guidance of the network at per-sample timesteps `t` (not counted)."""
        if self.cfg_scale == 1.0:
            return self.net(z, t, cond)
        null = conditioning.expand(self.null_cond, conditioning.batch_size(cond))
        uncond, guided = self.net(torch.cat([z, z]), torch.cat([t, t]), conditioning.cat(null, cond)).chunk(2)
        return uncond + self.cfg_scale * (guided - uncond)

    def predict(self, z: torch.Tensor, k: int, cond: Cond) -> torch.Tensor:
        """out_k, the guided prediction at state k, counted in `meter`. A conditioning with
        batch size 1 is shared by the whole batch."""
        self.meter.forward += 1
        cond = conditioning.expand(cond, z.shape[0])
        t = torch.full((z.shape[0],), float(self.timesteps[k]), dtype=timestep_dtype(z), device=z.device)
        out = self.guided(z, t, cond)
        if torch.is_grad_enabled() and out.requires_grad:
            self.meter.graph_steps.append(k)
            out = _CountBackward.apply(out, self.meter)
        return out

    def update(self, z: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
        """z_{k+1}: the affine part of step k given its prediction, computed in float32 at
        least (bf16 and fp16 states are updated in float32 and rounded once, as diffusers'
        schedulers do)."""
        step, dtype = self.coefficients[k], z.dtype
        if dtype in (torch.float16, torch.bfloat16):
            z, out = z.float(), out.float()
        z_next = step.a * z + step.b * out
        if step.s:
            if self.noise is None:
                raise RuntimeError(f"step {k} draws noise (s_k = {step.s:.3g}): call fix_noise first")
            z_next = z_next + step.s * self.noise[k].to(z_next)
        return z_next.to(dtype)

    def predicted_sample(self, z: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
        """x0_hat_k = p_k z_k + q_k out_k, the clean sample predicted at state k."""
        step = self.coefficients[k]
        return step.p * z + step.q * out

    def step(self, z: torch.Tensor, k: int, cond: Cond) -> torch.Tensor:
        """z_{k+1} as a pure function of (z_k, k, cond) and the network's weights."""
        return self.update(z, k, self.predict(z, k, cond))

    def skip_factor(self, k: int) -> float:
        """prod_{j >= k} a_j: how z_k reaches z_T along the affine path alone."""
        return math.prod(step.a for step in self.coefficients[k:])

    def sample(self, z: torch.Tensor, cond: Cond, graph_from: int | None = 0, checkpoint: bool = False) -> torch.Tensor:
        """Run every step from z_0. Steps before `graph_from` run without a graph (None: none
        keeps one); `checkpoint` recomputes each graph step's activations during backward."""
        stop = self.steps if graph_from is None else graph_from
        with torch.no_grad():
            for k in range(stop):
                z = self.step(z, k, cond)
        for k in range(stop, self.steps):
            if checkpoint:  # reentrant: the embeddings go as an argument of their own, or no gradient reaches them
                z = torch.utils.checkpoint.checkpoint(
                    lambda z, embeddings, k=k: self.step(z, k, conditioning.with_primary(cond, embeddings)),
                    z, conditioning.primary(cond), use_reentrant=True, preserve_rng_state=False,
                )
            else:
                z = self.step(z, k, cond)
        return z

    def trajectory(self, z: torch.Tensor, cond: Cond, keep=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run all steps without a graph; return z_T and the states z_k for k in `keep`."""
        kept = {}
        z = z.detach()
        with torch.no_grad():
            for k in range(self.steps):
                if k in keep:
                    kept[k] = z
                z = self.step(z, k, cond)
        return z, kept

"""The sampling chain: DDIM written as a pure step every estimator can replay.

Notation (this file, then the papers'):

    k            step index in sampling order, 0..T-1        (DDIM runs t from high to low)
    z_k          chain state before step k; z_0 = x_T        (the initial latent), z_T = x_0 (the sample)
    t_k          the network's timestep at state k           (diffusers' `scheduler.timesteps`)
    a_k          alphas_cumprod[t_k]                         (alpha-bar_t; a_T after the last step is
                                                              alphas_cumprod[0])
    eps_k        guided noise prediction eps(z_k, t_k, c)    (epsilon_theta)
    x0_hat_k     (z_k - sqrt(1 - a_k) eps_k) / sqrt(a_k)     (the predicted clean sample)
    sigma_k      sqrt((1 - a_k) / a_k)                       (noise-to-signal ratio, the time of the
                                                              exponential-integrator / probability-flow
                                                              ODE form)
    eta          DDIM's stochasticity                        (eta = 0: deterministic DDIM)
    s_k          eta * sqrt((1 - a_{k+1}) / (1 - a_k) * (1 - a_k / a_{k+1}))
                                                             (the standard deviation of step k's fresh
                                                              noise; sigma_t in the DDIM paper)

Step k maps z_k to

    z_{k+1} = c1_k * z_k + c2_k * eps_k + s_k * noise_k,
    c1_k = sqrt(a_{k+1} / a_k),   c2_k = sqrt(1 - a_{k+1} - s_k^2) - sqrt(a_{k+1} (1 - a_k) / a_k)

which is DDIM's update (x0_hat_k re-noised to level k+1) with its coefficients precomputed in
float64 from the diffusers scheduler's schedule. With eta > 0 the noise is drawn once per run
(`fix_noise`), so the chain stays a deterministic function of the latent, the conditioning and
the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler
from torch import nn


@dataclass
class Meter:
    """Network evaluations of the guided denoiser: forward calls, backward passes, and which
    steps ran with a graph. With classifier-free guidance one call is one batched network run
    on twice the batch."""

    forward: int = 0
    backward: int = 0
    graph_steps: list[int] = field(default_factory=list)


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eps, meter):
        ctx.meter = meter
        return eps.view_as(eps)

    @staticmethod
    def backward(ctx, grad):
        ctx.meter.backward += 1
        return grad, None


class DDIMChain:
    """T DDIM steps of `net(x, t, cond) -> eps` with optional classifier-free guidance.

    `null_cond` is the unconditional conditioning for guidance (shape like `cond`, or
    broadcastable over the batch); guidance 1 uses `cond` alone.
    """

    def __init__(
        self,
        net: nn.Module,
        steps: int,
        scheduler_config: dict,
        guidance: float = 1.0,
        null_cond: torch.Tensor | None = None,
        eta: float = 0.0,
    ):
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if guidance != 1.0 and null_cond is None:
            raise ValueError(f"guidance {guidance} needs a null_cond for the unconditional prediction")
        self.scheduler_config = scheduler_config
        self.net, self.steps, self.guidance, self.null_cond, self.eta = net, steps, guidance, null_cond, eta
        scheduler = self.diffusers_scheduler()
        self.timesteps = scheduler.timesteps.tolist() + [0]
        cumprod = scheduler.alphas_cumprod.double()
        self.alphas = [float(cumprod[t]) for t in self.timesteps]
        self.coefficients = [self._coefficients(k) for k in range(steps)]
        self.noise: list[torch.Tensor] | None = None
        self.meter = Meter()

    def diffusers_scheduler(self) -> DDIMScheduler:
        """diffusers' own scheduler set to this chain's steps (the reference its update equals)."""
        scheduler = DDIMScheduler(**self.scheduler_config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        scheduler.set_timesteps(self.steps)
        return scheduler

    def _coefficients(self, k: int) -> tuple[float, float, float]:
        """(c1_k, c2_k, s_k) of step k."""
        a, a_next = self.alphas[k], self.alphas[k + 1]
        noise_std = self.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        c1 = math.sqrt(a_next / a)
        c2 = math.sqrt(1 - a_next - noise_std**2) - math.sqrt(a_next * (1 - a) / a)
        return c1, c2, noise_std

    @property
    def sigmas(self) -> list[float]:
        """sigma_k = sqrt((1 - a_k) / a_k) at each state k = 0..T, the exponential-integrator time."""
        return [math.sqrt((1 - a) / a) for a in self.alphas]

    def fix_noise(self, like: torch.Tensor, generator: torch.Generator) -> None:
        """Draw the per-step noise of stochastic DDIM once, shaped like the latent."""
        self.noise = [
            torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device) for _ in range(self.steps)
        ]

    def guided(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance of the network at per-sample timesteps `t` (not counted)."""
        if self.guidance == 1.0:
            return self.net(z, t, cond)
        null = self.null_cond.expand_as(cond)
        uncond, guided = self.net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null, cond])).chunk(2)
        return uncond + self.guidance * (guided - uncond)

    def eps(self, z: torch.Tensor, k: int, cond: torch.Tensor) -> torch.Tensor:
        """The guided noise prediction at state k, counted in `meter`. A conditioning with
        batch size 1 is shared by the whole batch."""
        self.meter.forward += 1
        if cond.shape[0] != z.shape[0]:
            cond = cond.expand(z.shape[0], *cond.shape[1:])
        t = torch.full((z.shape[0],), float(self.timesteps[k]), dtype=z.dtype, device=z.device)
        eps = self.guided(z, t, cond)
        if torch.is_grad_enabled() and eps.requires_grad:
            self.meter.graph_steps.append(k)
            eps = _CountBackward.apply(eps, self.meter)
        return eps

    def update(self, z: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
        """The linear part of step k given its noise prediction."""
        c1, c2, noise_std = self.coefficients[k]
        z_next = c1 * z + c2 * eps
        if noise_std:
            if self.noise is None:
                raise RuntimeError(f"eta={self.eta} needs noise drawn once per run: call fix_noise first")
            z_next = z_next + noise_std * self.noise[k]
        return z_next

    def predicted_sample(self, z: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat_k = (z_k - sqrt(1 - a_k) eps_k) / sqrt(a_k), the clean sample predicted at state k."""
        a = self.alphas[k]
        return (z - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def step(self, z: torch.Tensor, k: int, cond: torch.Tensor) -> torch.Tensor:
        """z_{k+1} as a pure function of (z_k, k, cond) and the network's weights."""
        return self.update(z, k, self.eps(z, k, cond))

    def sample(
        self, z: torch.Tensor, cond: torch.Tensor, graph_from: int | None = 0, checkpoint: bool = False
    ) -> torch.Tensor:
        """Run every step from z_0. Steps before `graph_from` run without a graph (None: none
        keeps one); `checkpoint` recomputes each graph step's activations during backward."""
        stop = self.steps if graph_from is None else graph_from
        with torch.no_grad():
            for k in range(stop):
                z = self.step(z, k, cond)
        for k in range(stop, self.steps):
            if checkpoint:
                z = torch.utils.checkpoint.checkpoint(
                    self.step, z, k, cond, use_reentrant=True, preserve_rng_state=False
                )
            else:
                z = self.step(z, k, cond)
        return z

    def trajectory(self, z: torch.Tensor, cond: torch.Tensor, keep=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run all steps without a graph; return z_T and the states z_k for k in `keep`."""
        kept = {}
        z = z.detach()
        with torch.no_grad():
            for k in range(self.steps):
                if k in keep:
                    kept[k] = z
                z = self.step(z, k, cond)
        return z, kept

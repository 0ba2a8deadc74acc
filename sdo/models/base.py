"""The model interface: what tasks, estimators and the benchmark may know of a diffusion model.

A conditional diffusion model is seen only through

- `net`: the noise network, an `nn.Module` called as `net(x, t, cond) -> eps`; its parameters
  that require grad are the "weights" a task may optimise;
- `scheduler_config`: the diffusers scheduler configuration of its noise schedule;
- `state_shape`: the shape of one chain state (C, H, W): pixels, or a VAE latent;
- `encode(prompts) -> cond`: conditioning for a list of prompts (the empty prompt "" is the
  null prompt of classifier-free guidance);
- `decode(state) -> images`: the identity for a pixel model, the scaled VAE decode for a
  latent one; it stays inside the differentiable loss path;
- `with_lora(rank, seed)`: a copy whose only trainable weights are LoRA adapters initialised
  from `seed` (rank 0: all of the noise network's weights).

Everything else (the chain, a batch of initial latents) is built from those.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from sdo.chain import DDIMChain

NULL_PROMPT = ""


class DiffusionModel(ABC):
    """A conditional diffusion model behind the interface above."""

    net: nn.Module
    scheduler_config: dict
    state_shape: tuple[int, ...]
    prompts: tuple[str, ...] = ()  # the prompts a task cycles through when none are given

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Conditioning (B, ...) for B prompts; "" is the null prompt."""

    @abstractmethod
    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Images from chain states, differentiably."""

    @abstractmethod
    def with_lora(self, rank: int, seed: int = 0) -> "DiffusionModel":
        """A copy whose trainable weights are LoRA adapters of `rank`, their random half drawn
        from `seed` (0: every network weight)."""

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def null_cond(self) -> torch.Tensor:
        """The unconditional conditioning of guidance, batch 1 (broadcast over any batch)."""
        return self.encode([NULL_PROMPT]).detach()

    def make_chain(self, steps: int, guidance: float = 1.0, eta: float = 0.0) -> DDIMChain:
        """DDIM with T = `steps` over the noise network, guided with the null prompt."""
        null = self.null_cond() if guidance != 1.0 else None
        return DDIMChain(self.net, steps, self.scheduler_config, guidance=guidance, null_cond=null, eta=eta)

    def latent_batch(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal initial states drawn on the CPU from `generator` (the same numbers on
        every device), then moved to the model's device and dtype."""
        noise = torch.randn(batch, *self.state_shape, generator=generator, dtype=torch.float32)
        return noise.to(self.device, self.dtype)



@contextlib.contextmanager
def seeded(seed: int):
    """Draw from torch's global generators seeded with `seed`, leaving their state as it was:
    adapters initialised inside get the same numbers for the same seed in every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

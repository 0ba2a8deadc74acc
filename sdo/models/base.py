"""The model interface: what tasks, estimators and the benchmark may know of a diffusion model.

A conditional diffusion model is seen only through

- `net`: the network, an `nn.Module` called as `net(x, t, cond) -> out`, the prediction its
  sampler expects (the noise for DDIM, the velocity for flow matching); its parameters that
  require grad are the "weights" a task may optimise;
- `sampler` and `scheduler_config`: the registered sampler (`sdo.samplers`) and the diffusers
  scheduler configuration of its schedule; `sampler_options()` adds what the sampler needs
  beyond them (FLUX: the dynamic shift `mu` and its sigmas);
- `state_shape`: the shape of one chain state: pixels, a VAE latent, or packed latent tokens;
- `encode(prompts) -> cond`: conditioning for a list of prompts, a tensor or a mapping of
  tensors (`sdo.conditioning`; the empty prompt "" is the null prompt of guidance);
- `decode(state) -> images`: the identity for a pixel model, the VAE decode for a latent one;
  it stays inside the differentiable loss path;
- `with_lora(rank, seed)`: a copy whose only trainable weights are LoRA adapters initialised
  from `seed` (rank 0: all of the network's weights);
- `domain`: what its images are ("digits": 1x16x16 in [-1, 1]; "rgb": 3xHxW in [-1, 1]), which
  decides the rewards and metrics that apply;
- `options`: how it was loaded (recorded with every result).

Everything else (the chain, a batch of initial latents) is built from those.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch
from torch import nn

from sdo.conditioning import Cond
from sdo.samplers import Chain, make_chain

NULL_PROMPT = ""


class DiffusionModel(ABC):
    """A conditional diffusion model behind the interface above."""

    net: nn.Module
    sampler: ClassVar[str] = "ddim"
    domain: ClassVar[str]
    scheduler_config: dict
    state_shape: tuple[int, ...]
    prompts: tuple[str, ...] = ()  # the prompts a task cycles through when none are given
    options: dict

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> Cond:
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

    def null_cond(self) -> Cond:
        """The unconditional conditioning of guidance, batch 1 (broadcast over any batch)."""
        from sdo import conditioning

        return conditioning.detach(self.encode([NULL_PROMPT]))

    def sampler_options(self) -> dict:
        """What the sampler needs beyond the scheduler configuration (none by default)."""
        return {}

    def make_chain(self, steps: int, cfg_scale: float = 1.0, eta: float = 0.0) -> Chain:
        """The model's sampler with T = `steps` over its network, guided with the null prompt
        at `cfg_scale` (1: no classifier-free guidance); `eta` > 0 only where the sampler draws noise."""
        null = self.null_cond() if cfg_scale != 1.0 else None
        options = {"eta": eta} if eta else {}
        return make_chain(
            self.sampler, self.net, steps, self.scheduler_config, cfg_scale=cfg_scale, null_cond=null,
            **options, **self.sampler_options(),
        )

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

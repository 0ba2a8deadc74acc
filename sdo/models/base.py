"""The model interface: what tasks, estimators and the benchmark may know of a diffusion model.

A conditional diffusion model is seen only through

- `net`: the network, an `nn.Module` called as `net(x, t, cond) -> out`, the prediction its
  sampler expects (the noise for DDIM, the velocity for flow matching); its parameters that
  require grad are the "weights" a task may optimise;
- `process` and `scheduler_config`: what the network was trained for ("diffusion": noise, v or
  clean-sample prediction, as the configuration's `prediction_type` says; "flow": velocity) and
  the diffusers scheduler configuration of its schedule; `default_sampler()` the registered
  sampler (`sdo.samplers`) its pipeline samples with; `schedule_for(T)` what the sampler needs
  beyond the configuration (FLUX: the dynamic shift `mu` and its sigmas);
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
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from sdo.conditioning import Cond
from sdo.samplers import SAMPLERS, Chain, make_chain

NULL_PROMPT = ""


class DiffusionModel(ABC):
    """A conditional diffusion model behind the interface above."""

    net: nn.Module
    sampler: ClassVar[str] = "ddim"  # the family's default sampler
    process: ClassVar[str] = "diffusion"
    conditional: ClassVar[bool] = True  # False: the network ignores its conditioning (nothing for wrt="cond")
    weight_files: ClassVar[tuple[str, ...]] = ()  # the embedded weights (sdo.models.store kinds) it reads
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
    def with_lora(self, rank: int, seed: int = 0) -> DiffusionModel:
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

    def default_sampler(self) -> str:
        """The sampler a run takes when it names none (`sampler_for` its schedule)."""
        return self.sampler_for(self.scheduler_config)

    @classmethod
    def sampler_for(cls, schedule: dict) -> str:
        """The sampler that reproduces the scheduler class a configuration names (`_class_name`,
        e.g. SDXL's Euler) where one is registered for this model's process, else the family's."""
        own = schedule.get("_class_name")
        for name, sampler in SAMPLERS.items():
            if own and sampler.scheduler_class == own and sampler.process == cls.process:
                return name
        return cls.sampler

    @classmethod
    def planned_schedule(cls, location: str | None, architecture: str | None = None, **options) -> dict:
        """The scheduler configuration a run would sample with, read without loading a network
        (what the plan checks samplers and T against); {} where it cannot be known."""
        return {}

    def schedule_for(self, steps: int) -> dict:
        """What the sampler needs beyond the scheduler configuration at T = `steps` (none by default)."""
        return {}

    def check_sampler(self, sampler: str) -> None:
        """ValueError unless `sampler` samples what this model's network predicts."""
        cls = SAMPLERS.lookup(sampler)
        if cls.process != self.process:
            fitting = sorted(name for name, other in SAMPLERS.items() if other.process == self.process)
            raise ValueError(
                f"sampler {sampler!r} is for {cls.process} models; this is a {self.process} model: "
                f"use one of {', '.join(fitting)}"
            )

    def make_chain(self, steps: int, cfg_scale: float = 1.0, sampler: str | None = None, **options) -> Chain:
        """The chain of `sampler` (None: `default_sampler()`) with T = `steps` over the model's
        network, guided with the null prompt at `cfg_scale` (1: no classifier-free guidance),
        with the sampler's own `options` (e.g. eta=0.5 for ddim)."""
        sampler = sampler or self.default_sampler()
        self.check_sampler(sampler)
        null = self.null_cond() if cfg_scale != 1.0 else None
        return make_chain(
            sampler,
            self.net,
            steps,
            self.scheduler_config,
            cfg_scale=cfg_scale,
            null_cond=null,
            options=options,
            schedule=self.schedule_for(steps),
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images `decode` gives."""
        raise NotImplementedError

    def real_images(self, count: int, seed: int, folder: str = "") -> torch.Tensor:
        """`count` real images for seed `seed` from `folder` (resized to `image_size`), image
        (seed * count + b) mod N for sample b: what `init: invert` maps to states."""
        from sdo.images import load_image_folder, pick

        if not folder:
            raise ValueError(
                f"init=invert needs real images for {self.options.get('model')!r}: give the task option "
                "init_images (a folder of images)"
            )
        return pick(load_image_folder(folder, size=self.image_size), count, seed)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Chain states of clean images, the inverse of `decode` (what inversion starts from)."""
        raise NotImplementedError(f"{type(self).__name__} cannot map images to chain states")

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

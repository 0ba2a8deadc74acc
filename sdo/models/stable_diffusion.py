"""Stable Diffusion 1.x / 2.x behind the model interface: DDIM on the VAE's latents.

The state is the VAE latent scaled by the VAE's `scaling_factor`, shape (4, H/8, W/8); `decode`
is the VAE decoder, kept inside the differentiable loss path; `encode` is the CLIP text
encoder's last hidden state of prompts padded to the tokenizer's maximum length, as
`StableDiffusionPipeline` computes it. The sampler reads the UNet's prediction type (noise or v)
from the scheduler configuration, as the pipeline's scheduler does.
Source: `sd:<directory or model id>`, a bare `StableDiffusionPipeline` directory, or
`random:sd1.5` (the published architecture with random weights, for cost only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from sdo.models.pipelines import PipelineModel
from sdo.models.registry import register_model


class NoisePrediction(nn.Module):
    """out(x, t, cond) of a text-conditional UNet, as it was trained to predict (noise, v or the
    clean sample: the sampler reads `prediction_type` from the scheduler configuration), `cond`
    its text encoder's hidden states (a tensor) or a mapping with the `embeddings` and the
    UNet's `added_cond_kwargs` (SDXL). Costs one UNet call."""

    def __init__(self, unet: UNet2DConditionModel, time_ids=None):
        super().__init__()
        self.denoiser = unet
        self.register_buffer("time_ids", time_ids, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if isinstance(cond, torch.Tensor):
            return self.denoiser(x, t, encoder_hidden_states=cond).sample
        added = {"text_embeds": cond["pooled"], "time_ids": self.time_ids.to(x).expand(len(x), -1)}
        return self.denoiser(x, t, encoder_hidden_states=cond["embeddings"], added_cond_kwargs=added).sample


@register_model
class StableDiffusion(PipelineModel):
    """A Stable Diffusion 1.x / 2.x (or a few-step distillation of one, e.g. SD-Turbo) pipeline."""

    prefix: ClassVar[str] = "sd"
    family: ClassVar[str] = "Stable Diffusion"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("sd1.5",)
    networks = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    tokenizers = {"tokenizer": CLIPTokenizer}
    scheduler_class = DDIMScheduler

    @classmethod
    def schedule(cls, config: dict) -> dict:
        """As `StableDiffusionPipeline` amends a legacy scheduler configuration on loading:
        `steps_offset` 1 and `clip_sample` off, whatever the file says."""
        amended = {"steps_offset": 1} if config.get("steps_offset", 1) != 1 else {}
        return {**config, **amended, **({"clip_sample": False} if config.get("clip_sample") is True else {})}

    def make_net(self, parts: dict) -> nn.Module:
        return NoisePrediction(parts["unet"])

    def latent_shape(self, size: int) -> tuple[int, ...]:
        return (self.parts["unet"].config.in_channels, size, size)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.parts["text_encoder"](self.tokens("tokenizer", prompts))[0]

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.parts["text_encoder"]

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.parts["tokenizer"]

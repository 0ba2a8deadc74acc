"""Stable Diffusion 1.x / 2.x behind the model interface: DDIM on the VAE's latents.

The state is the VAE latent scaled by the VAE's `scaling_factor`, shape (4, H/8, W/8); `decode`
is the VAE decoder, kept inside the differentiable loss path; `encode` is the CLIP text
encoder's last hidden state of prompts padded to the tokenizer's maximum length, as
`StableDiffusionPipeline` computes it. A v-predicting UNet's output becomes a noise prediction.
Source: `sd:<directory or model id>`, a bare `StableDiffusionPipeline` directory, or
`random:sd1.5` (the published architecture with random weights, for cost only).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from sdo.models.pipelines import PipelineModel
from sdo.models.registry import register_model

SCHEDULE_KEYS = (  # what the DDIM sampler takes from a pipeline's scheduler configuration
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "timestep_spacing",
    "rescale_betas_zero_snr",
)
PREDICTION_TYPES = ("epsilon", "v_prediction")


class NoisePrediction(nn.Module):
    """eps(x, t, cond) of a text-conditional UNet, `cond` its text encoder's hidden states (a
    tensor) or a mapping with the `embeddings` and the UNet's `added_cond_kwargs` (SDXL). A
    v-predicting UNet's output is turned into eps = sqrt(a_t) v + sqrt(1 - a_t) x, so the DDIM
    sampler always sees a noise prediction. Costs one UNet call."""

    def __init__(self, unet: UNet2DConditionModel, schedule: dict, prediction_type: str = "epsilon", time_ids=None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.denoiser, self.prediction_type = unet, prediction_type
        self.register_buffer("alphas_cumprod", DDIMScheduler(**schedule).alphas_cumprod.double(), persistent=False)
        self.register_buffer("time_ids", time_ids, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if isinstance(cond, torch.Tensor):
            out = self.denoiser(x, t, encoder_hidden_states=cond).sample
        else:
            added = {"text_embeds": cond["pooled"], "time_ids": self.time_ids.to(x).expand(len(x), -1)}
            out = self.denoiser(x, t, encoder_hidden_states=cond["embeddings"], added_cond_kwargs=added).sample
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t.round().long()].to(x).view(-1, *[1] * (x.dim() - 1))
        return a.sqrt() * out + (1 - a).sqrt() * x


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

    def schedule(self, config: dict) -> dict:
        self.prediction_type = config.get("prediction_type", "epsilon")
        return {k: v for k, v in config.items() if k in SCHEDULE_KEYS}

    def make_net(self, parts: dict) -> nn.Module:
        return NoisePrediction(parts["unet"], self.scheduler_config, self.prediction_type)

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

"""FLUX.1 (dev and schnell) behind the model interface: flow matching's Euler step on packed
latent tokens, a transformer conditioned on T5's sequence and CLIP's pooled output.

As `FluxPipeline` computes them: the VAE's latents (16, H/8, W/8) are packed into 2x2 patches,
one token each, (H/16 W/16, 64): the chain's state; `decode` unpacks them and undoes the VAE's
`shift_factor` and `scaling_factor`. The conditioning is {embeddings: T5's last hidden state
(`max_sequence_length` tokens), pooled: CLIP's pooler output}; `wrt=cond` differentiates the
T5 embeddings only. The transformer takes the timestep divided by 1000, the text and image
position ids, and, for FLUX.1-dev, the guidance embedding of `distilled_guidance` (the
pipeline's `guidance_scale`, 3.5): that is FLUX.1-dev's guidance, one call per step. A
`cfg_scale` above 1 is the pipeline's true CFG with the empty negative prompt (a second
pass). The sigmas are the pipeline's linspace(1, 1/T, T), shifted by mu from the image's token
count where the schedule shifts dynamically (dev), not where it does not (schnell).
Source: `flux:<directory or model id>`, a bare `FluxPipeline` directory, or `random:flux-dev` /
`random:flux-schnell` (random weights, for cost only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from sdo.models.pipelines import PipelineModel, PipelineOptions, vae_decode
from sdo.models.registry import register_model
from sdo.models.sd3 import dynamic_shift


@dataclass
class FluxOptions(PipelineOptions):
    """`PipelineOptions`, `distilled_guidance`: FLUX.1-dev's guidance embedding (the pipeline's
    guidance_scale; ignored by schnell, which has none), and `max_sequence_length`: T5's tokens;
    None takes the pipeline's defaults (dev 3.5 and 512, schnell 256), else 3.5 and 512."""

    distilled_guidance: float | None = None
    max_sequence_length: int | None = None


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 w/2, 4C): each 2x2 patch one token (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size/2 size/2, 4C) -> (B, C, size, size), the inverse of `pack`."""
    b, _, channels = tokens.shape
    return (
        tokens.view(b, size // 2, size // 2, channels // 4, 2, 2)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(b, channels // 4, size, size)
    )


def image_ids(size: int) -> torch.Tensor:
    """The position ids of the packed tokens: (size/2 size/2, 3), row and column in channels 1, 2."""
    ids = torch.zeros(size // 2, size // 2, 3)
    ids[..., 1] += torch.arange(size // 2)[:, None]
    ids[..., 2] += torch.arange(size // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxVelocity(nn.Module):
    """v(x, t, cond) of a FLUX transformer on packed tokens: timestep / 1000, the guidance
    embedding where the transformer has one, and the text and image position ids."""

    def __init__(self, transformer: FluxTransformer2DModel, size: int, text_tokens: int, guidance: float):
        super().__init__()
        self.denoiser = transformer
        self.register_buffer("img_ids", image_ids(size), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(text_tokens, 3), persistent=False)
        self.guidance = guidance if transformer.config.guidance_embeds else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        guidance = (
            None
            if self.guidance is None
            else torch.full((len(x),), self.guidance, dtype=torch.float32, device=x.device)
        )
        return self.denoiser(
            hidden_states=x,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled"],
            encoder_hidden_states=cond["embeddings"],
            txt_ids=self.txt_ids.to(x),
            img_ids=self.img_ids.to(x),
        ).sample


@register_model
class Flux(PipelineModel):
    prefix: ClassVar[str] = "flux"
    family: ClassVar[str] = "FLUX.1"
    sampler: ClassVar[str] = "flow_euler"
    process: ClassVar[str] = "flow"
    pipelines: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("flux-dev", "flux-schnell")
    Options = FluxOptions
    networks = {
        "transformer": FluxTransformer2DModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": T5EncoderModel,
    }
    tokenizers = {"tokenizer": CLIPTokenizer, "tokenizer_2": T5Tokenizer}
    scheduler_class = FlowMatchEulerDiscreteScheduler
    denoiser: ClassVar[str] = "transformer"
    default_sample_size: ClassVar[int] = 128
    lora_targets: ClassVar[tuple[str, ...]] = (  # diffusers' DreamBooth LoRA script for FLUX
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )

    def __init__(self, parts, scheduler_config, options: FluxOptions, device="cpu", name="", pipeline_config=None):
        defaults = pipeline_config or {}
        if options.max_sequence_length is None:
            options.max_sequence_length = int(defaults.get("max_sequence_length", 512))
        if options.distilled_guidance is None:
            options.distilled_guidance = float(defaults.get("guidance_scale", 3.5))
        self.max_sequence_length, self.distilled_guidance = options.max_sequence_length, options.distilled_guidance
        super().__init__(parts, scheduler_config, options, device, name, pipeline_config)

    def latent_shape(self, size: int) -> tuple[int, ...]:
        if size % 2:
            raise ValueError(f"FLUX packs 2x2 latent patches: the latent side must be even, got {size}")
        self.latent_size = size
        return ((size // 2) ** 2, 4 * self.parts["vae"].config.latent_channels)

    def make_net(self, parts: dict) -> nn.Module:
        return FluxVelocity(parts["transformer"], self.latent_size, self.max_sequence_length, self.distilled_guidance)

    def schedule_for(self, steps: int) -> dict:
        """The pipeline's sigmas linspace(1, 1/T, T) and mu from the packed token count (used
        where the schedule shifts dynamically)."""
        sigmas = np.linspace(1.0, 1 / steps, steps).tolist()
        return {"mu": dynamic_shift(self.scheduler_config, self.state_shape[0]), "sigmas": sigmas}

    def encode(self, prompts: Sequence[str]) -> dict:
        pooled = self.parts["text_encoder"](self.tokens("tokenizer", prompts)).pooler_output
        t5 = self.parts["text_encoder_2"](self.tokens("tokenizer_2", prompts, self.max_sequence_length))[0]
        return {"embeddings": t5, "pooled": pooled}

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, unpack(state, self.latent_size))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return pack(super().encode_images(images))

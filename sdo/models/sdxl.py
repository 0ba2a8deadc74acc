"""SDXL behind the model interface: its pipeline's own sampler (Euler for SDXL base) on the VAE's
latents, two CLIP text encoders.

As `StableDiffusionXLPipeline` computes them: the prompt embeddings are the penultimate hidden
states of both text encoders concatenated (768 + 1280 = 2048 wide), the pooled embeddings the
second encoder's projected output (1280), and the micro-conditioning `add_time_ids` are
(H, W, 0, 0, H, W) for the resolution. The conditioning is the mapping {embeddings, pooled};
`wrt=cond` differentiates the prompt embeddings only, the pooled ones stay as the prompt gives
them. The unconditional conditioning of classifier-free guidance is zeros where the pipeline
says `force_zeros_for_empty_prompt` (SDXL base does), as the pipeline's default negative prompt
is. The default sampler is the pipeline's own scheduler where the harness has it (SDXL base
ships Euler), else DDIM. `decode` does what the pipeline does before its VAE: a float16 VAE whose
config says `force_upcast` decodes in float32, and latents are denormalised with the VAE's
`latents_mean` and `latents_std` where its config has them.
Source: `sdxl:<directory or model id>`, a bare `StableDiffusionXLPipeline` directory, or
`random:sdxl` (SDXL base 1.0's architecture with random weights, for cost only).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdo import conditioning
from sdo.models.registry import register_model
from sdo.models.stable_diffusion import NoisePrediction, StableDiffusion


@register_model
class StableDiffusionXL(StableDiffusion):
    prefix: ClassVar[str] = "sdxl"
    family: ClassVar[str] = "SDXL"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("sdxl",)
    networks = {
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }
    tokenizers = {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer}
    scheduler_class = DDIMScheduler
    default_sample_size: ClassVar[int] = 128

    @classmethod
    def schedule(cls, config: dict) -> dict:
        """As saved: SDXL's pipeline amends no legacy value (SD 1.x's does)."""
        return config

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Images from latents as the SDXL pipeline decodes them, differentiably."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            latents = state * torch.tensor(std).view(shape).to(state) / config.scaling_factor
            latents = latents + torch.tensor(mean).view(shape).to(state)
        else:
            latents = state / config.scaling_factor
        vae = self.vae
        if vae.dtype == torch.float16 and getattr(config, "force_upcast", False):
            if getattr(self, "_vae_float32", None) is None:
                self._vae_float32 = copy.deepcopy(vae).float()
            vae = self._vae_float32
        images = vae.decode(latents.to(vae.dtype)).sample
        return images.to(state.dtype)

    def make_net(self, parts: dict) -> nn.Module:
        size = self.resolution
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        return NoisePrediction(parts["unet"], time_ids=time_ids)

    def encode(self, prompts: Sequence[str]) -> dict:
        first = self.parts["text_encoder"](self.tokens("tokenizer", prompts), output_hidden_states=True)
        second = self.parts["text_encoder_2"](self.tokens("tokenizer_2", prompts), output_hidden_states=True)
        embeddings = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return {"embeddings": embeddings, "pooled": second.text_embeds}

    def null_cond(self) -> dict:
        """Zeros where the pipeline forces them for the empty prompt, else the empty prompt's encoding."""
        encoded = conditioning.detach(self.encode([""]))
        if self.pipeline_config.get("force_zeros_for_empty_prompt", True):
            return {name: torch.zeros_like(tensor) for name, tensor in encoded.items()}
        return encoded

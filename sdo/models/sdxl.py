"""SDXL behind the model interface: DDIM on the VAE's latents, two CLIP text encoders.

As `StableDiffusionXLPipeline` computes them: the prompt embeddings are the penultimate hidden
states of both text encoders concatenated (768 + 1280 = 2048 wide), the pooled embeddings the
second encoder's projected output (1280), and the micro-conditioning `add_time_ids` are
(H, W, 0, 0, H, W) for the resolution. The conditioning is the mapping {embeddings, pooled};
`wrt=cond` differentiates the prompt embeddings only, the pooled ones stay as the prompt gives
them. The unconditional conditioning of classifier-free guidance is zeros where the pipeline
says `force_zeros_for_empty_prompt` (SDXL base does), as the pipeline's default negative prompt
is. The pipeline ships an Euler scheduler; on an eps-predicting model DDIM on the same
timesteps is the same probability-flow ODE's exponential-integrator step, which the harness
samples with (the equivalence test swaps the pipeline's scheduler for DDIM).
Source: `sdxl:<directory or model id>`, a bare `StableDiffusionXLPipeline` directory, or
`random:sdxl` (SDXL base 1.0's architecture with random weights, for cost only).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

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
        "unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }
    tokenizers = {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer}
    scheduler_class = DDIMScheduler
    default_sample_size: ClassVar[int] = 128

    def make_net(self, parts: dict) -> nn.Module:
        size = self.resolution
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        return NoisePrediction(parts["unet"], self.scheduler_config, self.prediction_type, time_ids=time_ids)

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

"""Stable Diffusion 3 and 3.5 behind the model interface: flow matching's Euler step on the
16-channel VAE's latents, an MMDiT conditioned on CLIP-L, CLIP-G and T5.

As `StableDiffusion3Pipeline` computes them: the prompt embeddings are both CLIP encoders'
penultimate hidden states concatenated (768 + 1280) and zero-padded to T5's width (4096), then
T5's sequence appended (77 + `max_sequence_length` tokens; zeros where the pipeline has no T5);
the pooled embeddings are both CLIP encoders' projected outputs (768 + 1280). The conditioning is
the mapping {embeddings, pooled}; `wrt=cond` differentiates the prompt embeddings only. The
transformer takes the scheduler's timesteps (0..1000) and predicts the velocity; the
unconditional conditioning is the empty prompt's encoding (never zeros). `decode` undoes the
VAE's `shift_factor` and `scaling_factor`. Skip-layer guidance (off by default in the pipeline)
is not modelled.
Source: `sd3:<directory or model id>`, a bare `StableDiffusion3Pipeline` directory, or
`random:sd3.5-medium` (random weights, for cost only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from sdo.models.pipelines import PipelineModel, PipelineOptions
from sdo.models.registry import register_model
from sdo.samplers.base import scheduler_from


@dataclass
class SD3Options(PipelineOptions):
    """`PipelineOptions`, and `max_sequence_length`: T5's tokens (the pipeline's 256)."""

    max_sequence_length: int = 256


def calculate_shift(seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """The dynamic shift mu for an image of `seq_len` tokens, interpolated linearly (diffusers'
    `calculate_shift`)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + base_shift - slope * base_seq_len


def dynamic_shift(scheduler_config: dict, tokens: int) -> float:
    """mu for `tokens` image tokens as SD3's and FLUX's pipelines compute it: from the
    scheduler's resolved configuration, so the keys a configuration leaves out take
    FlowMatchEulerDiscreteScheduler's defaults (not the pipelines' fallbacks, which never apply)."""
    config = scheduler_from(FlowMatchEulerDiscreteScheduler, scheduler_config).config
    return calculate_shift(
        tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )


class VelocityPrediction(nn.Module):
    """v(x, t, cond) of an SD3 transformer: one call on the latents, the scheduler's timestep,
    the prompt embeddings and the pooled ones."""

    def __init__(self, transformer: SD3Transformer2DModel):
        super().__init__()
        self.denoiser = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.denoiser(
            hidden_states=x, timestep=t, encoder_hidden_states=cond["embeddings"], pooled_projections=cond["pooled"]
        ).sample


@register_model
class StableDiffusion3(PipelineModel):
    prefix: ClassVar[str] = "sd3"
    family: ClassVar[str] = "SD3"
    sampler: ClassVar[str] = "flow_euler"
    process: ClassVar[str] = "flow"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("sd3.5-medium",)
    Options = SD3Options
    networks = {
        "transformer": SD3Transformer2DModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModelWithProjection,
        "text_encoder_2": CLIPTextModelWithProjection,
        "text_encoder_3": T5EncoderModel,
    }
    tokenizers = {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "tokenizer_3": T5Tokenizer}
    optional: ClassVar[tuple[str, ...]] = ("text_encoder_3", "tokenizer_3")
    scheduler_class = FlowMatchEulerDiscreteScheduler
    denoiser: ClassVar[str] = "transformer"
    lora_targets: ClassVar[tuple[str, ...]] = (  # diffusers' DreamBooth LoRA script for SD3
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "attn.to_k",
        "attn.to_out.0",
        "attn.to_q",
        "attn.to_v",
    )

    def __init__(self, parts, scheduler_config, options: SD3Options, device="cpu", name="", pipeline_config=None):
        self.max_sequence_length = options.max_sequence_length
        super().__init__(parts, scheduler_config, options, device, name, pipeline_config)

    def make_net(self, parts: dict) -> nn.Module:
        return VelocityPrediction(parts["transformer"])

    def latent_shape(self, size: int) -> tuple[int, ...]:
        return (self.parts["transformer"].config.in_channels, size, size)

    def schedule_for(self, steps: int) -> dict:
        """mu from the image's token count where the schedule shifts dynamically (as SD3's
        pipeline computes it)."""
        if not self.scheduler_config.get("use_dynamic_shifting"):
            return {}
        patch = self.parts["transformer"].config.patch_size
        tokens = (self.state_shape[-1] // patch) * (self.state_shape[-2] // patch)
        return {"mu": dynamic_shift(self.scheduler_config, tokens)}

    def encode(self, prompts: Sequence[str]) -> dict:
        clips, pooled = [], []
        for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            out = self.parts[encoder](
                self.tokens(tokenizer, prompts, self.parts["tokenizer"].model_max_length), output_hidden_states=True
            )
            clips.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        clip = torch.cat(clips, dim=-1)
        width = self.parts["transformer"].config.joint_attention_dim
        if "text_encoder_3" in self.parts:
            t5 = self.parts["text_encoder_3"](self.tokens("tokenizer_3", prompts, self.max_sequence_length))[0]
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, dtype=clip.dtype, device=clip.device)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # zero-padded to T5's width (cropped if wider)
        return {"embeddings": torch.cat([clip, t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}

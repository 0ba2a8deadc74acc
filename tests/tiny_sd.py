"""A tiny Stable Diffusion pipeline with random weights, saved in the real diffusers layout."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdo.models.stable_diffusion import character_tokenizer

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_VAE = dict(
    sample_size=16, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=[16, 32],
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8,
)
TINY_TEXT = dict(
    vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=32, bos_token_id=512, eos_token_id=513, pad_token_id=513,
)


def build_tiny(directory: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """UNet 8x8 latents (images 16x16), text encoder width 32, SD's schedule with the PNDM
    scheduler SD ships; written by `StableDiffusionPipeline.save_pretrained`."""
    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**TINY_UNET),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
        tokenizer=character_tokenizer(),
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
            set_alpha_to_one=False, prediction_type=prediction_type,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return Path(directory)

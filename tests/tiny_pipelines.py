"""Tiny SD 1.x, SDXL, SD3 and FLUX pipelines with random weights, built offline (no hub access),
saved in the real diffusers layout.

Network sizes follow diffusers' own fast pipeline tests (`get_dummy_components` in
tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py,
tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py,
tests/pipelines/flux/test_pipeline_flux.py). What those tests download from the hub is
replaced by offline equivalents:

- CLIP tokenizers ("hf-internal-testing/tiny-random-clip"): `sdo.models.pipelines.character_tokenizer`,
  byte-level without merges (512 = <|startoftext|>, 513 = <|endoftext|>, also the pad token);
  the CLIP text configs get bos/eos/pad ids 512/513/513 to match.
- T5 tokenizer ("hf-internal-testing/tiny-random-t5"): `sdo.models.pipelines.unigram_tokenizer`,
  single printable characters, <pad>=0, </s>=1, <unk>=2, no sentinel tokens.
- T5 encoder config ("hf-internal-testing/tiny-random-t5"): d_model 32, d_ff 37, d_kv 8,
  4 heads, 5 layers, 8 relative-attention buckets, ReLU feed-forward (transformers'
  T5ModelTester sizes, which that hub repo was generated from); vocab_size 1103.

Schedulers: the published ones of the full-size models (SDXL base 1.0's
EulerDiscreteScheduler, which is also what the SDXL test uses; SD3.5's
FlowMatchEulerDiscreteScheduler with shift 3.0; FLUX.1-dev's with dynamic shifting), so the
tiny pipelines exercise the real timestep/sigma code paths. The tests use
`FlowMatchEulerDiscreteScheduler()` (shift 1.0) for SD3 and FLUX.

Each `build_tiny_*(directory, seed)` builds the pipeline, saves it with
`save_pretrained(directory)` and returns the in-memory pipeline (in eval mode). Reload with
`<Pipeline>.from_pretrained(directory, local_files_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from sdo.models.pipelines import character_tokenizer, unigram_tokenizer

CLIP_BOS, CLIP_EOS = 512, 513  # the byte-level CLIP tokenizer's start and end (= pad) tokens
SDXL_SCHEDULER = dict(  # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # stable-diffusion-3(.5)-medium
FLUX_DEV_SCHEDULER = dict(  # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


# ----------------------------------------------------------------------------- text encoders
def _clip_config(**overrides) -> CLIPTextConfig:
    cfg = dict(
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    cfg.update(overrides)
    return CLIPTextConfig(**cfg)


def _t5_encoder(seed: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=1103,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=5,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        initializer_factor=0.002,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def _finish(pipe, directory):
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(directory)
    return pipe


# ----------------------------------------------------------------------------- pipelines
def build_tiny_sdxl(directory, seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32 (text_encoder_2 projection_dim)
        cross_attention_dim=64,  # 32 (text_encoder) + 32 (text_encoder_2)
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config())
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config())
    tokenizer, tokenizer_2 = character_tokenizer(), character_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        add_watermarker=False,
    )
    return _finish(pipe, directory)


def build_tiny_sd3(directory, seed: int = 0) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=64,  # = 32 + 32 (both CLIP projections)
        out_channels=4,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_clip_config())
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config())
    text_encoder_3 = _t5_encoder(seed)
    tokenizer, tokenizer_2, tokenizer_3 = character_tokenizer(), character_tokenizer(), unigram_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    return _finish(pipe, directory)


def build_tiny_flux(directory, seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-dev style (guidance-distilled: `guidance_embeds=True`) unless told otherwise."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,  # packed: 4 = 2x2 patches of the VAE's 1 latent channel
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=32,  # = CLIP hidden size (pooler_output)
        axes_dims_rope=[4, 4, 8],  # sums to attention_head_dim
        guidance_embeds=guidance_embeds,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config())
    text_encoder_2 = _t5_encoder(seed)
    tokenizer, tokenizer_2 = character_tokenizer(), unigram_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        **(FLUX_DEV_SCHEDULER if guidance_embeds else dict(num_train_timesteps=1000, shift=1.0))
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )
    return _finish(pipe, directory)


# ----------------------------------------------------------------------------- SD 1.x
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_VAE = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=[16, 32],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    norm_num_groups=8,
)
TINY_TEXT = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)


def build_tiny_sd(directory: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """UNet 8x8 latents (images 16x16), text encoder width 32, SD's schedule with the PNDM
    scheduler SD ships; written by `StableDiffusionPipeline.save_pretrained`."""
    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**TINY_UNET),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
        tokenizer=character_tokenizer(),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
            set_alpha_to_one=False,
            prediction_type=prediction_type,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return Path(directory)


# ----------------------------------------------------------------------------- pixel DDPM
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

TINY_PIXEL_UNET = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
    norm_num_groups=4,
)


def build_tiny_ddpm(directory: Path, seed: int = 0, prediction_type: str = "epsilon", ddim: bool = False) -> Path:
    """An unconditional UNet2DModel on 16x16 RGB images (one attention block each way) with
    DDPMScheduler's defaults (google/ddpm-*'s linear schedule, `clip_sample` on), written by
    `DDPMPipeline.save_pretrained`; `ddim`: a `DDIMPipeline` with a DDIMScheduler on the same
    betas (`set_alpha_to_one` off and `steps_offset` 1, as SD ships it) instead."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_PIXEL_UNET)
    if ddim:
        scheduler = DDIMScheduler(prediction_type=prediction_type, set_alpha_to_one=False, steps_offset=1)
        DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory)
    else:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type)).save_pretrained(directory)
    return Path(directory)

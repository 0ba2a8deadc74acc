"""The published architectures of the diffusers text-to-image families, as their config.json
files give them: what `random:<architecture>` builds with random weights to measure time and
memory at true shapes (the values do not matter, the shapes do). Keys a config leaves out take
the classes' defaults.

SD 1.5 (runwayml), SDXL base 1.0 (stabilityai), SD3.5 medium (stabilityai), FLUX.1 dev and
schnell (black-forest-labs). Parameter counts (checked on the meta device in the tests): SD 1.5
UNet 859.5 M; SDXL UNet 2.567 B; SD3.5-medium transformer 2.243 B (2.470 B with its stored
position-embedding buffer); FLUX.1-dev transformer 11.901 B (schnell 11.891 B); T5-XXL encoder
4.762 B; CLIP-bigG text 694.7 M; CLIP-L text 123.1 M; VAEs 83.7 M (4 channels) and 83.8 M (16).
"""

from __future__ import annotations

import copy

SD15 = {  # runwayml/stable-diffusion-v1-5
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    "vae": {
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {  # CLIP ViT-L/14's text tower
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "scheduler": {  # PNDMScheduler, with the DDIM settings its config gives
        "_class_name": "PNDMScheduler",
        "num_train_timesteps": 1000,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "skip_prk_steps": True,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    },
}

# ----------------------------------------------------------------------------- shared pieces
_CLIP_TEXT = dict(  # what the CLIP text towers below share
    vocab_size=49408,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
CLIP_L_TEXT = dict(  # openai/clip-vit-large-patch14 text tower (SDXL text_encoder, SD3 text_encoder, FLUX text_encoder)
    _CLIP_TEXT,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
)
CLIP_BIGG_TEXT = dict(  # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k text tower (SDXL / SD3 text_encoder_2)
    _CLIP_TEXT,
    hidden_size=1280,
    intermediate_size=5120,
    projection_dim=1280,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
)
T5_XXL_ENCODER = dict(  # google/t5-v1_1-xxl (SD3 text_encoder_3, FLUX text_encoder_2: T5EncoderModel)
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_decoder_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="gated-gelu",  # -> dense_act_fn "gelu_new", is_gated_act True
    is_encoder_decoder=True,
    tie_word_embeddings=False,
    use_cache=True,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
VAE_16CH = dict(  # SD3 / SD3.5 VAE; FLUX's is the same network with other scaling/shift factors
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    force_upcast=True,
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    latents_mean=None,
    latents_std=None,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)

# ----------------------------------------------------------------------------- SDXL base 1.0
SDXL_BASE_1_0 = dict(
    unet=dict(
        act_fn="silu",
        addition_embed_type="text_time",
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=256,
        attention_head_dim=[5, 10, 20],
        block_out_channels=[320, 640, 1280],
        center_input_sample=False,
        class_embed_type=None,
        class_embeddings_concat=False,
        conv_in_kernel=3,
        conv_out_kernel=3,
        cross_attention_dim=2048,
        cross_attention_norm=None,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        downsample_padding=1,
        dual_cross_attention=False,
        encoder_hid_dim=None,
        encoder_hid_dim_type=None,
        flip_sin_to_cos=True,
        freq_shift=0,
        in_channels=4,
        layers_per_block=2,
        mid_block_only_cross_attention=None,
        mid_block_scale_factor=1,
        mid_block_type="UNetMidBlock2DCrossAttn",
        norm_eps=1e-05,
        norm_num_groups=32,
        num_attention_heads=None,
        num_class_embeds=None,
        only_cross_attention=False,
        out_channels=4,
        projection_class_embeddings_input_dim=2816,  # 6 * 256 + 1280
        resnet_out_scale_factor=1.0,
        resnet_skip_time_act=False,
        resnet_time_scale_shift="default",
        sample_size=128,
        time_cond_proj_dim=None,
        time_embedding_act_fn=None,
        time_embedding_dim=None,
        time_embedding_type="positional",
        timestep_post_act=None,
        transformer_layers_per_block=[1, 2, 10],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        upcast_attention=None,
        use_linear_projection=True,
    ),
    vae=dict(
        act_fn="silu",
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        force_upcast=True,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=0.13025,
    ),
    text_encoder=dict(CLIP_L_TEXT),  # CLIPTextModel
    text_encoder_2=dict(CLIP_BIGG_TEXT),  # CLIPTextModelWithProjection
    scheduler=dict(
        _class_name="EulerDiscreteScheduler",
        beta_end=0.012,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        clip_sample=False,
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        sample_max_value=1.0,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        timestep_spacing="leading",
        trained_betas=None,
        use_karras_sigmas=False,
    ),
    pipeline=dict(force_zeros_for_empty_prompt=True, tokenizer_max_length=77),
)

# ----------------------------------------------------------------------------- SD3.5 medium
SD3_5_MEDIUM = dict(
    transformer=dict(
        attention_head_dim=64,
        caption_projection_dim=1536,
        dual_attention_layers=list(range(13)),  # MMDiT-X: extra self-attention (attn2) in blocks 0..12
        in_channels=16,
        joint_attention_dim=4096,
        num_attention_heads=24,
        num_layers=24,
        out_channels=16,
        patch_size=2,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        sample_size=128,
    ),
    vae=dict(VAE_16CH),
    text_encoder=dict(CLIP_L_TEXT),  # CLIPTextModelWithProjection (SD3 uses the projected pooled output)
    text_encoder_2=dict(CLIP_BIGG_TEXT),  # CLIPTextModelWithProjection
    text_encoder_3=dict(T5_XXL_ENCODER),  # T5EncoderModel
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0),
)

# ----------------------------------------------------------------------------- FLUX.1
FLUX_1_DEV = dict(
    transformer=dict(
        attention_head_dim=128,
        axes_dims_rope=[16, 56, 56],
        guidance_embeds=True,
        in_channels=64,
        joint_attention_dim=4096,
        num_attention_heads=24,
        num_layers=19,
        num_single_layers=38,
        patch_size=1,
        pooled_projection_dim=768,
    ),
    vae=dict(VAE_16CH, scaling_factor=0.3611, shift_factor=0.1159),
    text_encoder=dict(CLIP_L_TEXT),  # CLIPTextModel (pooler_output only)
    text_encoder_2=dict(T5_XXL_ENCODER),  # T5EncoderModel
    scheduler=dict(
        _class_name="FlowMatchEulerDiscreteScheduler",
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
    ),
    pipeline=dict(guidance_scale=3.5, num_inference_steps=28, max_sequence_length=512),
)
# FLUX.1-schnell: same VAE / text encoders / transformer shape, but no guidance embedder and a
# static (shift 1.0 = unshifted) schedule; used with guidance_scale=0.0, 4 steps, max_sequence_length=256.
FLUX_1_SCHNELL = copy.deepcopy(FLUX_1_DEV)
FLUX_1_SCHNELL["transformer"]["guidance_embeds"] = False
FLUX_1_SCHNELL["scheduler"] = dict(
    _class_name="FlowMatchEulerDiscreteScheduler",
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=False,
)
FLUX_1_SCHNELL["pipeline"] = dict(guidance_scale=0.0, num_inference_steps=4, max_sequence_length=256)

ARCHITECTURES = {
    "sd1.5": SD15,
    "sdxl": SDXL_BASE_1_0,
    "sd3.5-medium": SD3_5_MEDIUM,
    "flux-dev": FLUX_1_DEV,
    "flux-schnell": FLUX_1_SCHNELL,
}

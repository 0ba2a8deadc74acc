"""Stable Diffusion behind the model interface: the chain runs on VAE latents.

The state is the VAE latent scaled by the VAE's `scaling_factor`, shape (4, H/8, W/8) for SD
1.x/2.x; `decode` is the VAE decoder, kept inside the differentiable loss path; `encode` is the
CLIP text encoder's last hidden state of prompts padded to the tokenizer's maximum length, as
`StableDiffusionPipeline` computes it. Only the UNet is ever trained; the VAE and the text
encoder stay frozen.

Weights come from a local directory in diffusers layout or the local Hugging Face cache
(`load`; source `sd:<directory or model id>`, or the bare directory of a
`StableDiffusionPipeline`), or are drawn at random from SD 1.5's published architecture for
cost-only measurements (`random`; source `random:sd1.5`): time and memory do not depend on the
weights' values. Sampler: DDIM (`sdo.samplers.ddim`) on the pipeline's noise schedule.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdo.models.base import DiffusionModel
from sdo.models.pipelines import (
    PipelineOptions, apply_vae_levers, character_tokenizer, check_weights, not_found, parameter_count, prepare,
    resolution_of, torch_dtype, vae_decode, with_adapter,
)
from sdo.models.registry import register_model

SD15 = {
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
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    },
}

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULE_KEYS = (  # what the chain takes from a pipeline's scheduler configuration
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "timestep_spacing",
    "rescale_betas_zero_snr",
)
PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at dawn",
    "a close-up photo of a red fox in the snow",
    "an oil painting of a busy city street in the rain",
)


class TextUNet(nn.Module):
    """eps(x, t, cond) of a text-conditional UNet, `cond` the text encoder's hidden states. A
    v-predicting UNet's output is turned into eps = sqrt(a_t) v + sqrt(1 - a_t) x, so the chain
    always sees a noise prediction. Costs one UNet call."""

    def __init__(self, unet: UNet2DConditionModel, schedule: dict, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.unet = unet
        self.prediction_type = prediction_type
        self.alphas_cumprod = DDIMScheduler(**schedule).alphas_cumprod.double()  # the chain's a_t

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.unet(x, t, encoder_hidden_states=cond).sample
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t.long().cpu()].to(x).view(-1, *[1] * (x.dim() - 1))
        return a.sqrt() * out + (1 - a).sqrt() * x


@register_model
class StableDiffusion(DiffusionModel):
    """A Stable Diffusion 1.x / 2.x (or a few-step distillation of one, e.g. SD-Turbo) pipeline's
    UNet, VAE, text encoder and noise schedule. Load options: `PipelineOptions` (the memory
    levers among them are recorded in `options`); the UNet's attention uses PyTorch's fused
    scaled-dot-product attention unless `attention_slicing` computes it in slices of heads."""

    prefix: ClassVar[str] = "sd"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    architectures: ClassVar[dict] = {"sd1.5": SD15}
    domain: ClassVar[str] = "rgb"
    Options = PipelineOptions
    prompts = PROMPTS

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        options: PipelineOptions,
        device: torch.device | str = "cpu",
        name: str = "stable-diffusion",
    ):
        dtype = torch_dtype(options.dtype)
        for module in (unet, vae, text_encoder):
            prepare(module, device, dtype)
        processor = AttnProcessor2_0()
        unet.set_attn_processor(processor)
        vae.set_attn_processor(processor)
        if options.attention_slicing:
            unet.set_attention_slice("auto")
        if options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        apply_vae_levers(vae, options)
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if k in SCHEDULE_KEYS}
        self.net = TextUNet(unet, self.scheduler_config, scheduler_config.get("prediction_type", "epsilon"))
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        resolution = resolution_of(unet.config.sample_size, factor, options.resolution)
        self.state_shape = (unet.config.in_channels, resolution // factor, resolution // factor)
        self.options = {"model": name, **asdict(options), "resolution": resolution, "prediction_type": self.net.prediction_type}

    @classmethod
    def check(cls, location: str | None, allow_download: bool = False, **options) -> None:
        check_weights("Stable Diffusion", location, COMPONENTS, allow_download)

    @classmethod
    def load(cls, location: str | Path, device: torch.device | str = "cpu", **options) -> "StableDiffusion":
        """From a directory in diffusers layout or a model id in the local Hugging Face cache;
        nothing is downloaded unless `allow_download`. Raises FileNotFoundError saying where it
        looked and how to provide the weights."""
        options = PipelineOptions(**options)
        source, dtype = str(location), torch_dtype(options.dtype)
        offline = {"local_files_only": not options.allow_download}
        try:
            parts = {
                "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **offline),
                "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **offline),
                "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **offline),
                "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **offline),
            }
            schedule = DDIMScheduler.load_config(source, subfolder="scheduler", **offline)
        except OSError as error:
            raise not_found("Stable Diffusion", source, COMPONENTS, error) from error
        return cls(**parts, scheduler_config=schedule, options=options, device=device, name=source)

    @classmethod
    def random(
        cls, architecture: str = "sd1.5", device: torch.device | str = "cpu", seed: int = 0, **options
    ) -> "StableDiffusion":
        """Stable Diffusion `architecture`'s networks (UNet 860 M, VAE 84 M, text encoder 123 M
        parameters; default resolution 512) with PyTorch's default random initialisation drawn
        on `device` from `seed`, and a byte-level tokenizer: for measuring time and memory
        only. Cost: drawing 1.07 G random numbers, about 25 s on 2 CPU cores and well under a
        second on a GPU; device="meta" allocates nothing (parameter counts, shapes)."""
        if architecture not in cls.architectures:
            raise ValueError(f"unknown Stable Diffusion architecture {architecture!r}; known: {sorted(cls.architectures)}")
        config = cls.architectures[architecture]
        device = torch.device(device)
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else "cpu"), device:
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**config["unet"])
            vae = AutoencoderKL(**config["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
        tokenizer = character_tokenizer(config["text_encoder"]["max_position_embeddings"])
        return cls(
            unet, vae, text_encoder, tokenizer, config["scheduler"], PipelineOptions(**options), device=device,
            name=f"random:{architecture}",
        )

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), roughly in [-1, 1]: one VAE decoder pass, differentiable."""
        return vae_decode(self.vae, state)

    def with_lora(self, rank: int, seed: int = 0) -> "StableDiffusion":
        """A copy sharing the frozen VAE and text encoder whose UNet is a deep copy: with LoRA
        adapters of `rank` on every attention projection (to_q, to_k, to_v, to_out.0) as the
        only trainable weights, or for rank 0 with every UNet weight trainable."""
        return with_adapter(self, rank, seed, LORA_TARGETS, "unet")

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network, in numbers of scalars."""
        networks = {"unet": self.net.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        return {name: parameter_count(module) for name, module in networks.items()}

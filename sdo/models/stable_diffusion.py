"""Stable Diffusion behind the model interface: the chain runs on VAE latents.

The state is the VAE latent scaled by the VAE's `scaling_factor`, shape (4, H/8, W/8) for SD
1.x/2.x; `decode` is the VAE decoder, kept inside the differentiable loss path; `encode` is the
CLIP text encoder's last hidden state of prompts padded to the tokenizer's maximum length, as
`StableDiffusionPipeline` computes it. Only the UNet is ever trained; the VAE and the text
encoder stay frozen.

Weights come from a local directory in diffusers layout or the local Hugging Face cache
(`load`), or are drawn at random from SD 1.5's published architecture for cost-only
measurements (`random`): time and memory do not depend on the weights' values.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import huggingface_hub.constants
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from peft import LoraConfig
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdo.models.base import DiffusionModel, seeded

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
ARCHITECTURES = {"1.5": SD15}

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


def character_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer without merges: each byte of a word is one token (CLIP's own first 512
    ids: the bytes, then the bytes that end a word), with start and end tokens at 512 and 513
    (padding repeats the end token). It stands in for CLIP's 49408-token vocabulary where only
    sequence lengths matter: random weights, tiny test models."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


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


def _not_found(source: str, error: OSError) -> FileNotFoundError:
    directory = Path(source).expanduser().resolve()
    cache = huggingface_hub.constants.HF_HUB_CACHE
    return FileNotFoundError(
        f"Stable Diffusion model {source!r} not found: no complete diffusers layout "
        f"({', '.join(c + '/' for c in COMPONENTS)}) in the directory {directory}, and no copy of the model id "
        f"{source!r} in the Hugging Face cache {cache} ({str(error).splitlines()[0]}). "
        f"Download the model on a machine with network access and pass its directory (e.g. "
        f"StableDiffusionPipeline.from_pretrained(id).save_pretrained(DIR), or `hf download ID --local-dir DIR`), "
        f"or pass allow_download=True."
    )


class StableDiffusion(DiffusionModel):
    """A Stable Diffusion 1.x / 2.x (or a few-step distillation of one, e.g. SD-Turbo) pipeline's
    UNet, VAE, text encoder and noise schedule.

    Memory levers, recorded in `options`:
    - `dtype` of every network;
    - `gradient_checkpointing`: the UNet's and the VAE decoder's blocks recompute their
      activations during backward (about one extra forward; activations kept per block);
    - `attention_slicing`: the UNet computes attention in two slices of heads, each with the
      explicit softmax (it replaces SDPA in the UNet);
    - `sdpa`: PyTorch's fused scaled-dot-product attention (diffusers' default) rather than
      the explicit softmax(QK^T)V, which materialises the attention matrix;
    - `vae_slicing`: the VAE decodes one image of a batch at a time.
    """

    prompts = PROMPTS

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        *,
        resolution: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        gradient_checkpointing: bool = False,
        attention_slicing: bool = False,
        vae_slicing: bool = False,
        sdpa: bool = True,
        name: str = "stable-diffusion",
    ):
        for module in (unet, vae, text_encoder):
            module.to(device).eval().requires_grad_(False)
            if module.dtype != dtype:  # cast only when needed: diffusers warns on every cast
                module.to(dtype)
        processor = AttnProcessor2_0() if sdpa else AttnProcessor()
        unet.set_attn_processor(processor)
        vae.set_attn_processor(processor)
        if attention_slicing:
            unet.set_attention_slice("auto")
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            vae.enable_gradient_checkpointing()
        if vae_slicing:
            vae.enable_slicing()
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if k in SCHEDULE_KEYS}
        self.net = TextUNet(unet, self.scheduler_config, scheduler_config.get("prediction_type", "epsilon"))
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        resolution = resolution or unet.config.sample_size * factor
        if resolution % factor:
            raise ValueError(f"resolution must be a multiple of the VAE's downsampling factor {factor}, got {resolution}")
        self.state_shape = (unet.config.in_channels, resolution // factor, resolution // factor)
        self.options = {
            "model": name,
            "resolution": resolution,
            "dtype": str(dtype).removeprefix("torch."),
            "gradient_checkpointing": gradient_checkpointing,
            "attention_slicing": attention_slicing,
            "sdpa": sdpa,
            "vae_slicing": vae_slicing,
            "prediction_type": self.net.prediction_type,
        }

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        allow_download: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        resolution: int | None = None,
        **levers,
    ) -> "StableDiffusion":
        """From a directory in diffusers layout (`StableDiffusionPipeline.save_pretrained`
        writes one) or a model id in the local Hugging Face cache; nothing is downloaded unless
        `allow_download`. The resolution defaults to the UNet's sample size times the VAE's
        factor; `levers` are the memory levers of the class. Raises FileNotFoundError saying
        where it looked and how to provide the weights."""
        source, offline = str(source), {"local_files_only": not allow_download}
        try:
            parts = {
                "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **offline),
                "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **offline),
                "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **offline),
                "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **offline),
            }
            schedule = DDIMScheduler.load_config(source, subfolder="scheduler", **offline)
        except OSError as error:
            raise _not_found(source, error) from error
        return cls(
            **parts, scheduler_config=schedule, resolution=resolution, dtype=dtype, device=device, name=source, **levers
        )

    @classmethod
    def random(
        cls,
        version: str = "1.5",
        resolution: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
        **levers,
    ) -> "StableDiffusion":
        """Stable Diffusion `version`'s architecture (UNet 860 M, VAE 84 M, text encoder 123 M
        parameters; default resolution 512) with PyTorch's default random initialisation drawn
        on `device` from `seed`, and a byte-level tokenizer: for measuring time and memory
        only. Cost: drawing 1.07 G random numbers, about 25 s on 2 CPU cores and well under a
        second on a GPU; device="meta" allocates nothing (parameter counts, shapes)."""
        if version not in ARCHITECTURES:
            raise ValueError(f"unknown Stable Diffusion version {version!r}; known: {sorted(ARCHITECTURES)}")
        config = ARCHITECTURES[version]
        device = torch.device(device)
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else "cpu"), device:
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**config["unet"])
            vae = AutoencoderKL(**config["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
        tokenizer = character_tokenizer(config["text_encoder"]["max_position_embeddings"])
        return cls(
            unet, vae, text_encoder, tokenizer, config["scheduler"],
            resolution=resolution, dtype=dtype, device=device, name=f"random SD {version}", **levers,
        )

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), roughly in [-1, 1]: one VAE decoder pass, differentiable."""
        return self.vae.decode(state / self.vae.config.scaling_factor).sample

    def with_lora(self, rank: int, seed: int = 0) -> "StableDiffusion":
        """A copy sharing the frozen VAE and text encoder whose UNet is a deep copy: with LoRA
        adapters of `rank` on every attention projection (to_q, to_k, to_v, to_out.0; A
        Gaussian, B zero, so the outputs start unchanged) as the only trainable weights, or for
        rank 0 with every UNet weight trainable."""
        if rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: all UNet weights), got {rank}")
        tuned = copy.copy(self)
        tuned.net = copy.deepcopy(self.net).requires_grad_(rank == 0)
        if rank:
            with seeded(seed):
                tuned.net.unet.add_adapter(
                    LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
                )
            for name, param in tuned.net.named_parameters():
                param.requires_grad_("lora_" in name)
        tuned.options = {**self.options, "lora_rank": rank}
        return tuned

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network, in numbers of scalars."""
        networks = {"unet": self.net.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        return {name: sum(p.numel() for p in module.parameters()) for name, module in networks.items()}

"""What the diffusers text-to-image families share: their load options, finding weights offline,
the memory levers, a byte-level CLIP tokenizer for random weights, and the VAE decode.

Weights come from a local directory in diffusers' layout (`Pipeline.save_pretrained` writes one)
or a model id in the local Hugging Face cache; nothing is downloaded unless `allow_download`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import huggingface_hub.constants
import torch
from torch import nn
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdo.models.base import seeded


@dataclass
class PipelineOptions:
    """Load options of a diffusers text-to-image model (its options block):

    - `resolution`: image side in pixels (None: the network's own sample size);
    - `dtype`: float32, float16 or bfloat16 (float64 for exactness tests) for every network;
    - `gradient_checkpointing`: the denoiser's and the VAE decoder's blocks recompute their
      activations during backward (about one extra forward; activations kept per block);
    - `attention_slicing`: a UNet's attention in slices of heads (UNet models only);
    - `vae_slicing`: the VAE decodes one image of a batch at a time;
    - `vae_tiling`: the VAE decodes overlapping tiles (large images);
    - `allow_download`: fetch missing weights from the Hugging Face hub (off: local only).
    """

    resolution: int | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    allow_download: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")


DTYPES = ("float32", "float16", "bfloat16", "float64")  # float64: exactness tests on tiny models


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def not_found(family: str, source: str, components: Sequence[str], error: Exception | None = None) -> FileNotFoundError:
    """The error for weights that are not on this machine: where it looked and how to provide them."""
    directory = Path(source).expanduser().resolve()
    cache = huggingface_hub.constants.HF_HUB_CACHE
    why = f" ({str(error).splitlines()[0]})" if error else ""
    return FileNotFoundError(
        f"{family} model {source!r} not found: no complete diffusers layout ({', '.join(c + '/' for c in components)}) "
        f"in the directory {directory}, and no copy of the model id {source!r} in the Hugging Face cache {cache}{why}. "
        f"Download the model on a machine with network access and pass its directory (e.g. "
        f"Pipeline.from_pretrained(id).save_pretrained(DIR), or `hf download ID --local-dir DIR`), or pass "
        f"--model-option allow_download=true."
    )


def check_weights(family: str, source: str | None, components: Sequence[str], allow_download: bool = False) -> None:
    """FileNotFoundError unless `source` is a directory with a model_index.json or a model id
    in the local cache (or downloads are allowed)."""
    if not source:
        raise ValueError(f"a {family} model needs a location: a diffusers directory or a model id")
    if allow_download or (Path(source).expanduser() / "model_index.json").is_file():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json")
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise not_found(family, source, components)


def prepare(module: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """A frozen network in eval mode on `device` in `dtype` (cast only when needed: diffusers
    warns on every cast)."""
    module.to(device).eval().requires_grad_(False)
    if module.dtype != dtype:
        module.to(dtype)
    return module


def apply_vae_levers(vae, options: PipelineOptions) -> None:
    if options.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    if options.vae_slicing:
        vae.enable_slicing()
    if options.vae_tiling:
        vae.enable_tiling()


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W), roughly in [-1, 1], from scaled latents: the VAE's `shift_factor`
    (SD3, FLUX) and `scaling_factor` undone, one decoder pass, differentiable."""
    shift = vae.config.get("shift_factor") or 0.0
    return vae.decode(latents / vae.config.scaling_factor + shift).sample


def resolution_of(sample_size: int, factor: int, resolution: int | None) -> int:
    resolution = resolution or sample_size * factor
    if resolution % factor:
        raise ValueError(f"resolution must be a multiple of the VAE's downsampling factor {factor}, got {resolution}")
    return resolution


def with_adapter(model, rank: int, seed: int, targets: Sequence[str], attribute: str):
    """A copy of `model` whose network (`model.net`) is a deep copy: with LoRA adapters of
    `rank` (Gaussian A, zero B, so outputs start unchanged) on `targets` of its `attribute`
    module as the only trainable weights, or for rank 0 with every weight trainable."""
    from peft import LoraConfig

    if rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0: all weights), got {rank}")
    tuned = copy.copy(model)
    tuned.net = copy.deepcopy(model.net).requires_grad_(rank == 0)
    if rank:
        with seeded(seed):
            getattr(tuned.net, attribute).add_adapter(
                LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))
            )
        for name, param in tuned.net.named_parameters():
            param.requires_grad_("lora_" in name)
    tuned.options = {**model.options, "lora_rank": rank}
    return tuned


def character_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer without merges: each byte of a word is one token (CLIP's own first 512
    ids: the bytes, then the bytes that end a word), with start and end tokens at 512 and 513
    (padding repeats the end token). It stands in for CLIP's 49408-token vocabulary where only
    sequence lengths matter: random weights, tiny test models."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""What the diffusers text-to-image families share (`PipelineModel`): their load options, finding
weights offline, building published architectures with random weights, the memory levers,
offline tokenizers for random weights, LoRA adapters, and the VAE decode. Each family (SD 1.x/2.x,
SDXL, SD3, FLUX) is one file that says which networks its pipeline holds, how prompts become
conditioning, how its denoiser is called and how latents become images.

Weights come from a local directory in diffusers' layout (`Pipeline.save_pretrained` writes one)
or a model id in the local Hugging Face cache; nothing is downloaded unless `allow_download`.
"""

from __future__ import annotations

import contextlib
import copy
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import huggingface_hub.constants
import torch
from diffusers import DiffusionPipeline, ModelMixin
from torch import nn
from transformers import CLIPTokenizer, T5Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdo.models.architectures import ARCHITECTURES
from sdo.models.base import DiffusionModel, seeded

PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at dawn",
    "a close-up photo of a red fox in the snow",
    "an oil painting of a busy city street in the rain",
)


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
    `rank` (Gaussian A, zero B, so outputs start unchanged) on `targets` of the net's
    `attribute` module as the only trainable weights, or for rank 0 with every weight trainable."""
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


def unigram_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """A T5 tokenizer over single printable characters (each also word-initial), with <pad>=0,
    </s>=1, <unk>=2 and no sentinel tokens: it stands in for T5's 32k-piece vocabulary where only
    sequence lengths matter (random weights, tiny test models)."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + c, -2.0) for c in chars] + [(c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


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


@contextlib.contextmanager
def building(device, dtype: torch.dtype, seed: int):
    """Networks built inside are created on `device` directly in `dtype` (no float32 copy of a
    12 B-parameter transformer) with PyTorch's default random initialisation drawn from `seed`."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else "cpu"), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _build(network: type, config: dict):
    """A network of `network`'s class from a config dict: diffusers models take it as keyword
    arguments, transformers models through their config class."""
    if issubclass(network, ModelMixin):
        return network(**config)
    return network(network.config_class(**config))


def _from_pretrained(network: type, source: str, component: str, dtype: torch.dtype, offline: dict):
    dtype_key = "torch_dtype" if issubclass(network, ModelMixin) else "dtype"
    return network.from_pretrained(source, subfolder=component, **{dtype_key: dtype}, **offline)


class PipelineModel(DiffusionModel):
    """A diffusers text-to-image pipeline's networks behind the model interface: the denoiser (a
    UNet or a transformer: the only network a task trains), the VAE (its decode stays in the
    gradient path), the text encoders and tokenizers (frozen), and the noise schedule.

    A family declares `networks` (component -> class, in the pipeline's layout), `tokenizers`
    (component -> class), `denoiser` (the component trained), `lora_targets`, its `prefix`,
    `pipelines` and `architectures`, and implements `make_net`, `encode` and `latent_shape`
    (and `decode` where latents need more than the VAE's scaling). Memory levers and dtype come
    from the options (`PipelineOptions`) and are recorded in `options`."""

    domain: ClassVar[str] = "rgb"
    Options = PipelineOptions
    family: ClassVar[str]
    networks: ClassVar[dict[str, type]]
    tokenizers: ClassVar[dict[str, type]]
    scheduler_class: ClassVar[type]
    optional: ClassVar[tuple[str, ...]] = ()  # components a pipeline may leave out (SD3's T5)
    denoiser: ClassVar[str] = "unet"
    lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    default_sample_size: ClassVar[int] = 64  # latent pixels, where the denoiser's config has none
    prompts = PROMPTS

    def __init__(
        self,
        parts: dict,
        scheduler_config: dict,
        options: PipelineOptions,
        device="cpu",
        name: str = "",
        pipeline_config: dict | None = None,
    ):
        dtype = torch_dtype(options.dtype)
        for module in parts.values():
            if isinstance(module, nn.Module):
                prepare(module, device, dtype)
        denoiser, vae = parts[self.denoiser], parts["vae"]
        if options.attention_slicing:
            if not hasattr(denoiser, "set_attention_slice"):
                raise ValueError(f"attention_slicing applies to UNets; the {self.family} {self.denoiser} has none")
            denoiser.set_attention_slice("auto")
        if options.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        apply_vae_levers(vae, options)
        self.parts, self.vae, self.pipeline_config = parts, vae, dict(pipeline_config or {})
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        sample_size = getattr(denoiser.config, "sample_size", None) or self.default_sample_size
        self.resolution = resolution_of(sample_size, self.vae_factor, options.resolution)
        self.scheduler_config = self.schedule(dict(scheduler_config))
        self.state_shape = self.latent_shape(self.resolution // self.vae_factor)
        self.net = self.make_net(parts).to(device)  # its own buffers (ids, schedules) beside the denoiser
        self.options = {"model": name, **asdict(options), "resolution": self.resolution}

    @classmethod
    def schedule(cls, config: dict) -> dict:
        """The scheduler configuration the sampler takes: the saved one, amended as the family's
        pipeline amends it on loading (all of it as saved, unless a family's pipeline amends)."""
        return config

    @classmethod
    def planned_schedule(
        cls, location: str | None, architecture: str | None = None, allow_download: bool = False, **options
    ) -> dict:
        if architecture is not None:
            return cls.schedule(dict(ARCHITECTURES[architecture]["scheduler"]))
        try:
            return cls.schedule(
                dict(cls.scheduler_class.load_config(location, subfolder="scheduler", local_files_only=True))
            )
        except (OSError, ValueError, TypeError):
            return {}

    def make_net(self, parts: dict) -> nn.Module:
        """`net(x, t, cond) -> out` over the denoiser."""
        raise NotImplementedError

    def latent_shape(self, size: int) -> tuple[int, ...]:
        """One chain state's shape for latents `size` x `size`."""
        raise NotImplementedError

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), roughly in [-1, 1]: one VAE decoder pass, differentiable."""
        return vae_decode(self.vae, state)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images: the mean of the VAE encoder's distribution (deterministic),
        shifted and scaled as `decode` undoes."""
        config = self.vae.config
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean
        return ((latents - (config.get("shift_factor") or 0.0)) * config.scaling_factor).to(images.dtype)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)

    @classmethod
    def check(cls, location: str | None, allow_download: bool = False, **options) -> None:
        check_weights(cls.family, location, [*cls.networks, *cls.tokenizers, "scheduler"], allow_download)

    @classmethod
    def load(cls, location: str | Path, device="cpu", **options):
        """From a directory in diffusers layout or a model id in the local Hugging Face cache;
        nothing is downloaded unless `allow_download`. FileNotFoundError says where it looked
        and how to provide the weights."""
        options = cls.Options(**options)
        source, dtype = str(location), torch_dtype(options.dtype)
        offline = {"local_files_only": not options.allow_download}
        components = [*cls.networks, *cls.tokenizers, "scheduler"]
        try:
            index = DiffusionPipeline.load_config(source, **offline)
            present = {
                name for name, value in index.items() if isinstance(value, (list, tuple)) and value[0] is not None
            }
            parts = {
                name: _from_pretrained(network, source, name, dtype, offline)
                for name, network in cls.networks.items()
                if name in present or name not in cls.optional
            }
            parts.update(
                {
                    name: tokenizer.from_pretrained(source, subfolder=name, **offline)
                    for name, tokenizer in cls.tokenizers.items()
                    if name in present or name not in cls.optional
                }
            )
            schedule = cls.scheduler_class.load_config(source, subfolder="scheduler", **offline)
        except OSError as error:
            raise not_found(cls.family, source, components, error) from error
        return cls(parts, schedule, options, device=device, name=source, pipeline_config=index)

    @classmethod
    def random(cls, architecture: str, device="cpu", seed: int = 0, **options):
        """The published `architecture`'s networks (`sdo.models.architectures`) with PyTorch's
        default random initialisation drawn on `device` from `seed`, built directly in the
        options' dtype, and offline tokenizers: for measuring time and memory only.
        device="meta" allocates nothing (parameter counts, shapes)."""
        if architecture not in cls.architectures:
            raise ValueError(f"unknown {cls.family} architecture {architecture!r}; known: {sorted(cls.architectures)}")
        config = ARCHITECTURES[architecture]
        options = cls.Options(**options)
        with building(device, torch_dtype(options.dtype), seed):
            parts = {name: _build(network, config[name]) for name, network in cls.networks.items()}
        for name, tokenizer in cls.tokenizers.items():
            parts[name] = unigram_tokenizer() if issubclass(tokenizer, T5Tokenizer) else character_tokenizer()
        return cls(
            parts,
            config["scheduler"],
            options,
            device=device,
            name=f"random:{architecture}",
            pipeline_config=config.get("pipeline"),
        )

    def with_lora(self, rank: int, seed: int = 0):
        """A copy sharing the frozen networks whose denoiser is a deep copy: with LoRA adapters
        of `rank` on `lora_targets` as its only trainable weights, or for rank 0 with every
        denoiser weight trainable."""
        return with_adapter(self, rank, seed, self.lora_targets, "denoiser")

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network, in numbers of scalars."""
        return {name: parameter_count(module) for name, module in self.parts.items() if isinstance(module, nn.Module)}

    def tokens(self, component: str, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """Token ids of `prompts` padded to `max_length` (the tokenizer's own by default)."""
        tokenizer = self.parts[component]
        max_length = max_length or tokenizer.model_max_length
        ids = tokenizer(
            list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        return ids.input_ids.to(self.vae.device)

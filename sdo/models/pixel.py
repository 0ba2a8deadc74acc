"""Unconditional pixel-space diffusers UNets (`UNet2DModel` in a `DDPMPipeline` or `DDIMPipeline`
directory, e.g. google/ddpm-celebahq-256) behind the model interface: DDIM on the images.

The state is the image itself (3xHxW in [-1, 1]), so `decode` is the identity. The network ignores
its conditioning: `encode` gives zeros (B, 1) for the null prompt "" (the model's one prompt) and
refuses any other, classifier-free guidance is refused (it would mix a prediction with itself at
twice the cost), and the network refuses a conditioning that carries a graph (`wrt="cond"`: there
is nothing to optimise). The sampler runs on the pipeline's own scheduler configuration (betas,
timestep spacing, `steps_offset`, `set_alpha_to_one` as a `DDIMScheduler` built from it takes
them, and `prediction_type`: noise, v or clean sample, which the sampler reads), with the clamps
of the predicted image (`clip_sample`, `thresholding`, on in google/ddpm-*) turned off: a clamp
is not affine and zeroes gradients. Cost: one UNet call per step.
Source: `pixel:<directory or model id>`, or a bare `DDPMPipeline` / `DDIMPipeline` directory.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DModel
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from sdo import conditioning
from sdo.models.base import NULL_PROMPT, DiffusionModel, seeded
from sdo.models.pipelines import DTYPES, check_weights, not_found, prepare, torch_dtype
from sdo.models.registry import pipeline_class, register_model

log = logging.getLogger(__name__)

CLAMPS = ("clip_sample", "thresholding")  # what a DDPM scheduler does to the predicted image, off here
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
COMPONENTS = ("unet", "scheduler")


@dataclass
class PixelOptions:
    """Load options of a pixel-space UNet (its options block):

    - `resolution`: image side in pixels (None: the UNet's own sample size), a multiple of the
      UNet's downsampling factor;
    - `dtype`: float32, float16 or bfloat16 (float64 for exactness tests);
    - `gradient_checkpointing`: the UNet's blocks recompute their activations during backward
      (about one extra forward; activations kept per block);
    - `allow_download`: fetch missing weights from the Hugging Face hub (off: local only).
    """

    resolution: int | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    allow_download: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {self.resolution}")


class UnconditionalNet(nn.Module):
    """out(x, t, cond) of an unconditional UNet, as it was trained to predict (the sampler reads
    `prediction_type` from the scheduler configuration): `cond` is ignored, and refused when it
    carries a graph. Costs one UNet call."""

    def __init__(self, unet: UNet2DModel, name: str = ""):
        super().__init__()
        self.denoiser, self.name = unet, name

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if torch.is_grad_enabled() and conditioning.primary(cond).requires_grad:
            raise ValueError(
                f"the pixel model {self.name!r} is unconditional: it has no conditioning to optimise (wrt='cond'); "
                "optimise the latent or the weights instead"
            )
        return self.denoiser(x, t).sample


def _size(unet: UNet2DModel, resolution: int | None) -> tuple[int, int]:
    """(H, W) of the images: `resolution` square, else the UNet's sample size; ValueError unless
    a multiple of the UNet's downsampling factor."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    sample_size = unet.config.sample_size
    if resolution is None and sample_size is None:
        raise ValueError("the UNet's config gives no sample_size: pass the resolution option")
    if resolution is not None:
        size = (resolution, resolution)
    else:
        size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    if any(side % factor for side in size):
        raise ValueError(f"resolution must be a multiple of the UNet's downsampling factor {factor}, got {size}")
    return size


def _check_unet(config, source: str) -> None:
    """ValueError for a UNet this backend cannot run: class-conditional, not 3 channels in and
    out (learned variances included)."""
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise ValueError(
            f"pixel model {source!r} is class-conditional (num_class_embeds, class_embed_type); "
            "the pixel backend takes unconditional UNets only"
        )
    channels = (config.get("in_channels", 3), config.get("out_channels", 3))
    if channels != (3, 3):
        raise ValueError(
            f"pixel model {source!r} has {channels[0]} input and {channels[1]} output channels; "
            "the pixel backend takes RGB images in and the same shape out (3 and 3)"
        )


@register_model
class PixelUNet(DiffusionModel):
    """An unconditional `UNet2DModel` on RGB images with its pipeline's noise schedule."""

    prefix: ClassVar[str] = "pixel"
    family: ClassVar[str] = "pixel"
    pipelines: ClassVar[tuple[str, ...]] = ("DDPMPipeline", "DDIMPipeline")
    architectures: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = "rgb"
    conditional: ClassVar[bool] = False
    prompts = (NULL_PROMPT,)
    Options = PixelOptions

    def __init__(self, unet: UNet2DModel, scheduler_config: dict, options: PixelOptions, device="cpu", name: str = ""):
        _check_unet(unet.config, name)
        prepare(unet, device, torch_dtype(options.dtype))
        if options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        height, width = _size(unet, options.resolution)
        self.state_shape = (unet.config.in_channels, height, width)
        clamps = [key for key in CLAMPS if scheduler_config.get(key)]
        if clamps:
            log.info(
                "pixel model %s: its scheduler's %s turned off (a clamp zeroes gradients)", name, ", ".join(clamps)
            )
        self.scheduler_config = {**scheduler_config, **{key: False for key in CLAMPS}}
        self.net = UnconditionalNet(unet, name)
        resolution = height if height == width else [height, width]
        self.options = {"model": name, **asdict(options), "resolution": resolution}

    @classmethod
    def planned_schedule(cls, location: str | None, architecture: str | None = None, **options) -> dict:
        try:
            schedule = DDPMScheduler.load_config(location, subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError, TypeError):
            return {}
        return {**schedule, **{key: False for key in CLAMPS}}

    @classmethod
    def check(cls, location: str | None, allow_download: bool = False, **options) -> None:
        """FileNotFoundError unless the weights are on this machine (or downloads are allowed);
        ValueError for a pipeline of another kind."""
        check_weights(cls.family, location, COMPONENTS, allow_download)
        name = pipeline_class(location)
        if name is not None and name not in cls.pipelines:
            raise ValueError(
                f"pixel model {location!r} is a {name}; the pixel backend takes {', '.join(cls.pipelines)}"
            )

    @classmethod
    def load(cls, location: str | Path, device="cpu", **options):
        """From a directory in diffusers layout or a model id in the local Hugging Face cache;
        nothing is downloaded unless `allow_download`. FileNotFoundError says where it looked
        and how to provide the weights."""
        options = cls.Options(**options)
        cls.check(location and str(location), options.allow_download)
        source = str(location)
        offline = {"local_files_only": not options.allow_download}
        try:
            dtype = torch_dtype(options.dtype)
            unet = UNet2DModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **offline)
            schedule = DDPMScheduler.load_config(source, subfolder="scheduler", **offline)
        except OSError as error:
            raise not_found(cls.family, source, COMPONENTS, error) from error
        return cls(unet, schedule, options, device=device, name=source)

    def make_chain(self, steps: int, cfg_scale: float = 1.0, *args, **options):
        """The model's chain (`DiffusionModel.make_chain`); classifier-free guidance is refused
        (the model is unconditional)."""
        if cfg_scale != 1.0:
            raise ValueError(
                f"the pixel model {self.options['model']!r} is unconditional: classifier-free guidance "
                f"has nothing to mix; use cfg_scale 1, got {cfg_scale}"
            )
        return super().make_chain(steps, cfg_scale, *args, **options)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Zeros (B, 1), which the network ignores; only the null prompt "" is accepted."""
        for prompt in prompts:
            if prompt != NULL_PROMPT:
                raise ValueError(
                    f"the pixel model {self.options['model']!r} is unconditional: its only prompt is '' "
                    f"(none), got {prompt!r}"
                )
        return torch.zeros(len(prompts), 1, device=self.device, dtype=self.dtype)

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.state_shape[-2:])

    def with_lora(self, rank: int, seed: int = 0):
        """A copy whose network is a deep copy: LoRA adapters (peft) of `rank` on the UNet's
        attention projections and resnet convolutions as its only trainable weights (Kaiming
        A, zero B: outputs start unchanged), or for rank 0 every UNet weight."""
        if rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: all UNet weights), got {rank}")
        net = copy.deepcopy(self.net).requires_grad_(rank == 0)
        if rank:
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
            with seeded(seed):
                net.denoiser = inject_adapter_in_model(config, net.denoiser)
            for name, param in net.named_parameters():
                param.requires_grad_("lora_" in name)
        tuned = copy.copy(self)
        tuned.net = net
        tuned.options = {**self.options, "lora_rank": rank}
        return tuned

"""The embedded default model: the digits denoiser (DDIM, noise prediction) behind the model
interface. Source: `embedded`; option `weights`: the directory of its trained weights (default:
the checkout's results/models)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from peft import LoraConfig, inject_adapter_in_model

from sdo.models import store
from sdo.models.base import NULL_PROMPT, DiffusionModel, seeded
from sdo.models.data import NUM_CLASSES, load_split
from sdo.models.denoiser import DDIM_SETTINGS, DigitDenoiser
from sdo.models.registry import register_model

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


@register_model
class EmbeddedDigits(DiffusionModel):
    """16x16 pixel diffusion over handwritten digits; prompts are "0".."9", "" is the null prompt.
    The state is the image itself, so `decode` is the identity."""

    prefix: ClassVar[str] = "embedded"
    kind: ClassVar[str] = "denoiser"  # the weights file in the store
    weight_files: ClassVar[tuple[str, ...]] = ("denoiser", "classifier")  # the classifier: rewards and metrics
    domain: ClassVar[str] = "digits"
    prompts = tuple(str(d) for d in range(NUM_CLASSES))

    @dataclass
    class Options:
        """`weights`: the directory holding the trained weights (empty: results/models)."""

        weights: str = ""

    def __init__(self, net: DigitDenoiser, directory: Path | str = store.DEFAULT_DIR):
        self.net = net
        self.directory = Path(directory)
        self.scheduler_config = {**DDIM_SETTINGS, **net.config["scheduler"]}  # weights saved before these were stated
        unet = net.config["unet"]
        self.state_shape = (unet["in_channels"], unet["sample_size"], unet["sample_size"])
        self.options = {"model": self.prefix, "weights": str(self.directory)}

    @classmethod
    def load(
        cls,
        location: str | None = None,
        device: torch.device | str = "cpu",
        weights: str = "",
        dtype: torch.dtype = torch.float32,
    ):
        """The committed (or retrained) network from the `weights` directory."""
        cls.check(location)
        directory = Path(weights) if weights else store.DEFAULT_DIR
        return cls(store.load(cls.kind, directory, dtype).to(device), directory)

    @classmethod
    def check(cls, location: str | None, weights: str = "", **options) -> None:
        """The source takes no location (the weights directory is an option); missing weights
        are not an error here (the workflow retrains them), present but unreadable ones are."""
        if location:
            raise ValueError(
                f"model {cls.prefix!r} takes no location; give its weights directory as the option weights={location}"
            )
        for kind in cls.weight_files:
            store.check(kind, Path(weights) if weights else store.DEFAULT_DIR)

    @classmethod
    def planned_schedule(
        cls, location: str | None, architecture: str | None = None, weights: str = "", **options
    ) -> dict:
        from sdo.models.denoiser import DEFAULT_CONFIG, FLOW_CONFIG

        meta = (Path(weights) if weights else store.DEFAULT_DIR) / f"{cls.kind}.json"
        try:
            schedule = json.loads(meta.read_text())["config"]["scheduler"]
        except (OSError, ValueError, KeyError, TypeError):
            schedule = (FLOW_CONFIG if cls.process == "flow" else DEFAULT_CONFIG)["scheduler"]
        return {**DDIM_SETTINGS, **schedule}

    def labels(self, prompts: Sequence[str]) -> torch.Tensor:
        """Label indices of prompts: the digit, or NUM_CLASSES for the null prompt."""
        labels = []
        for prompt in prompts:
            prompt = str(prompt)
            if prompt == NULL_PROMPT:
                labels.append(NUM_CLASSES)
            elif prompt in self.prompts:
                labels.append(int(prompt))
            else:
                raise ValueError(f"the digits model's prompts are '0'..'9' or '' (null), got {prompt!r}")
        return torch.tensor(labels, device=self.device)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.net.embed(self.labels(prompts))

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.state_shape[-2:])

    def real_images(self, count: int, seed: int, folder: str = "") -> torch.Tensor:
        """The held-out real digits (never used in training), or a folder's images in grey."""
        from sdo.images import pick

        if folder:
            return super().real_images(count, seed, folder).mean(dim=1, keepdim=True)
        return pick(load_split("held_out")[0], count, seed)

    def with_lora(self, rank: int, seed: int = 0):
        """LoRA adapters (peft) on the UNet's attention and convolutions, or, for rank 0, all
        UNet weights; the label embeddings stay frozen."""
        if rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: all UNet weights), got {rank}")
        net = copy.deepcopy(self.net).requires_grad_(False)
        if rank == 0:
            net.unet.requires_grad_(True)
        else:
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
            with seeded(seed):
                net.unet = inject_adapter_in_model(config, net.unet)
            for name, param in net.unet.named_parameters():
                param.requires_grad_("lora_" in name)
        tuned = copy.copy(self)
        tuned.net = net
        tuned.options = {**self.options, "lora_rank": rank}
        return tuned

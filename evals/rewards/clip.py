"""Differentiable rewards on RGB images from CLIP models, loaded from local paths only:
`clip` (CLIP similarity to a text), `aesthetic` (the LAION aesthetic predictor over CLIP
ViT-L/14), `style` (Gram matrices of CLIP patch tokens against a style image), and the
`mean_square` stand-in for cost measurements without any reward weights.

Each reward is a callable `images (B, 3, H, W) in [-1, 1] -> (B,)` scores, higher is better.
CLIP's preprocessing (resize the shortest side, centre crop, normalise with the processor's
mean and std) runs in torch, so gradients reach the images; the cost is one CLIP vision pass
per call. Beside them, the CLIP score metric. Nothing is downloaded: a missing path raises
FileNotFoundError saying what it should hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPModel, CLIPProcessor

from evals.rewards import register_reward
from evals.rewards.base import ModelReward, gram
from sdo.images import load_image

CLIP_CONTENTS = (
    "a CLIP model directory (config.json, weights, tokenizer and preprocessor configuration, as CLIPModel and "
    "CLIPProcessor.save_pretrained write them)"
)


def _existing(path: str | Path, contents: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: it should be {contents}")
    return path


class _ClipReward(ModelReward):
    """A CLIP model (and any extra scoring modules) from a local directory, on `device`."""

    def __init__(self, clip_dir: str | Path, device: torch.device | str = "cpu", **extra: nn.Module):
        directory = _existing(clip_dir, CLIP_CONTENTS)
        try:
            clip = CLIPModel.from_pretrained(directory, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
        except OSError as error:
            raise FileNotFoundError(f"{directory} is incomplete ({error}); it should be {CLIP_CONTENTS}") from error
        self.base = nn.ModuleDict({"clip": clip, **extra}).to(device).eval().requires_grad_(False)
        super().__init__(self.base)
        self.tokenizer = processor.tokenizer
        image_processor = processor.image_processor
        self.shortest_edge = image_processor.size["shortest_edge"]
        self.crop = (image_processor.crop_size["height"], image_processor.crop_size["width"])
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's pixel values: bicubic antialiased resize of the shortest side, centre crop,
        normalisation; differentiable."""
        height, width = images.shape[-2:]
        scale = self.shortest_edge / min(height, width)
        size = (max(round(height * scale), self.crop[0]), max(round(width * scale), self.crop[1]))
        x = F.interpolate((images + 1) / 2, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (x - self.mean.to(x)) / self.std.to(x)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's projected image embeddings (B, D), not normalised."""
        clip = self.model_for(images)["clip"]
        return clip.visual_projection(clip.vision_model(pixel_values=self.pixels(images)).pooler_output)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's projected text embeddings (N, D) of prompts, not normalised; no graph."""
        clip = self.base["clip"]
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(clip.device)
        return clip.text_projection(clip.text_model(**tokens).pooler_output)


class ClipSimilarity(_ClipReward):
    """Cosine similarity between CLIP's embeddings of the image and of `prompt`."""

    def __init__(self, model_dir: str | Path, prompt: str, device: torch.device | str = "cpu"):
        super().__init__(model_dir, device)
        self.text = self.text_embeddings([prompt])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.image_embeddings(images), self.text.to(images), dim=-1)


def aesthetic_head(path: str | Path) -> nn.Sequential:
    """The LAION aesthetic predictor's linear layers, in order, from a safetensors file or a
    torch state dict: the improved predictor's MLP (keys `layers.{0,2,4,6,7}.weight/bias`,
    768-1024-128-64-16-1 with dropouts between and no activations, so in eval mode it is its
    linear layers in sequence) or the original single Linear(768, 1) (keys `weight`, `bias`)."""
    path = _existing(
        path, "the LAION aesthetic predictor head's weights (.safetensors, or a torch state dict .pth/.pt)"
    )
    state = (
        load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    )
    if set(state) == {"weight", "bias"}:
        state = {f"layers.0.{key}": value for key, value in state.items()}
    indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("layers.")})
    if not indices or set(state) != {f"layers.{i}.{p}" for i in indices for p in ("weight", "bias")}:
        raise ValueError(
            f"{path} holds neither the LAION aesthetic MLP (layers.N.weight/bias) nor a single Linear head "
            f"(weight, bias); keys {sorted(state)}"
        )
    head = nn.Sequential(*(nn.Linear(*state[f"layers.{i}.weight"].shape[::-1]) for i in indices))
    head.load_state_dict(
        {f"{n}.{p}": state[f"layers.{i}.{p}"] for n, i in enumerate(indices) for p in ("weight", "bias")}
    )
    return head


class AestheticScore(_ClipReward):
    """The LAION aesthetic predictor: its head over L2-normalised CLIP image embeddings (it was
    trained on ViT-L/14's, so `clip_dir` should hold that model)."""

    def __init__(self, clip_dir: str | Path, head_path: str | Path, device: torch.device | str = "cpu"):
        head = aesthetic_head(head_path)
        super().__init__(clip_dir, device, head=head)
        width = self.base["clip"].config.projection_dim
        if head[0].in_features != width:
            raise ValueError(
                f"the aesthetic head takes {head[0].in_features}-d embeddings, the CLIP model gives {width}-d"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model_for(images)["head"](F.normalize(self.image_embeddings(images), dim=-1)).squeeze(-1)


class ClipStyle(_ClipReward):
    """The SDO authors' style loss, as a reward: minus the squared Frobenius distance between
    the Gram matrices (D x D over the patch tokens, divided by their number) of CLIP vision
    hidden states at `layer` (0 is the embeddings; the CLS token dropped) of the sample and of
    a style image. The authors use CLIP ViT-B/16."""

    def __init__(
        self, clip_dir: str | Path, style_image_path: str | Path, layer: int = 3, device: torch.device | str = "cpu"
    ):
        style = load_image(_existing(style_image_path, "the style image (a file PIL can open)")).to(device)
        super().__init__(clip_dir, device)
        depth = self.base["clip"].config.vision_config.num_hidden_layers
        if not 0 <= layer <= depth:
            raise ValueError(f"layer must lie in 0..{depth} (the CLIP vision model's depth), got {layer}")
        self.layer = layer
        with torch.no_grad():
            self.reference = self.gram(style)

    def gram(self, images: torch.Tensor) -> torch.Tensor:
        clip = self.model_for(images)["clip"]
        hidden = clip.vision_model(pixel_values=self.pixels(images), output_hidden_states=True).hidden_states[
            self.layer
        ]
        return gram(hidden[:, 1:].transpose(1, 2))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return -((self.gram(images) - self.reference.to(images)) ** 2).sum(dim=(1, 2))


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model_dir: str | Path) -> float:
    """CLIP score as torchmetrics defines it: 100 * max(cos(image_i, prompt_i), 0), averaged
    over the pairs, with CLIP from a local directory. (torchmetrics' own CLIPScore fails with
    transformers 5, whose get_image_features returns a model output, and takes hub names only.)"""
    if len(prompts) != len(images):
        raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
    clip = _ClipReward(model_dir, images.device)
    images = images.float()
    cosine = F.cosine_similarity(clip.image_embeddings(images), clip.text_embeddings(list(prompts)).to(images), dim=-1)
    return float(100 * cosine.clamp(min=0).mean())


def mean_square(images: torch.Tensor) -> torch.Tensor:
    """Minus each image's mean squared value: as a loss, the decoded images' mean square (a
    stand-in with the decode in the gradient path, for cost measurements without reward weights)."""
    return -(images**2).flatten(1).mean(1)


@dataclass
class ClipOptions:
    """`clip_model`: a local CLIP model directory; `text`: the text the images should match
    (empty: the model's first prompt)."""

    clip_model: str = ""
    text: str = ""


@dataclass
class AestheticOptions:
    """`clip_model`: a local CLIP ViT-L/14 directory; `head`: the LAION aesthetic predictor
    head's weights (.safetensors, or a torch state dict)."""

    clip_model: str = ""
    head: str = ""


@dataclass
class StyleOptions:
    """`clip_model`: a local CLIP directory (the SDO authors use ViT-B/16); `image`: the style
    image; `layer`: the vision layer whose patch tokens are compared."""

    clip_model: str = ""
    image: str = ""
    layer: int = 3


@dataclass
class NoOptions:
    """No options."""


def _given(value: str, key: str, reward: str) -> str:
    if not value:
        raise ValueError(f"the {reward} reward needs the reward option {key}")
    return value


@register_reward("clip", "rgb", ClipOptions)
def clip_reward(context, options: ClipOptions):
    text = options.text or (context.model.prompts[0] if context.model.prompts else "")
    return ClipSimilarity(
        _given(options.clip_model, "clip_model", "clip"), _given(text, "text", "clip"), context.device
    )


@register_reward("aesthetic", "rgb", AestheticOptions)
def aesthetic_reward(context, options: AestheticOptions):
    clip_dir = _given(options.clip_model, "clip_model", "aesthetic")
    return AestheticScore(clip_dir, _given(options.head, "head", "aesthetic"), context.device)


@register_reward("style", "rgb", StyleOptions)
def style_reward(context, options: StyleOptions):
    clip_dir = _given(options.clip_model, "clip_model", "style")
    return ClipStyle(clip_dir, _given(options.image, "image", "style"), options.layer, context.device)


@register_reward("mean_square", "rgb", NoOptions)
def mean_square_reward(context, options: NoOptions):
    return mean_square

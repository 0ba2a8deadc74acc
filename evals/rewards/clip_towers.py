"""What the text-to-image preference rewards share: the original scoring code's image
preprocessing written in torch (so gradients reach the images), local files checked before any
weights load, tokenizers checked to split a prompt, and, for those built on CLIP's two towers
(PickScore, HPSv2), a transformers `CLIPModel` scoring each image against a prompt as
`scale * cos(image, text)` of the projected embeddings.

Each image is scored against its own prompt where the caller passes prompts, else against the
reward's default text. CLIP text embeddings are computed once per distinct prompt (and dtype),
without a graph; each call costs one vision pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from evals.rewards.base import ModelReward

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def existing(path: str | Path, contents: str) -> Path:
    """`path` if it exists, else FileNotFoundError saying what it should hold and where it comes from."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: it should be {contents}")
    return path


def load_tokenizer(kind: type, directory: str | Path, contents: str):
    """A tokenizer of class `kind` from a local directory; FileNotFoundError where it holds none
    (transformers 5 would build an empty one from a directory without tokenizer files)."""
    directory = existing(directory, contents)
    if not any((directory / name).exists() for name in TOKENIZER_FILES):
        listed = ", ".join(TOKENIZER_FILES)
        raise FileNotFoundError(f"{directory} holds no tokenizer ({listed}): it should be {contents}")
    try:
        return kind.from_pretrained(directory, local_files_only=True)
    except (OSError, TypeError, ValueError) as error:
        raise FileNotFoundError(f"{directory} holds no usable tokenizer ({error}); it should be {contents}") from error


def check_tokenizer(tokenizer, text: str, where: str | Path) -> None:
    """ValueError where `text` tokenizes to special tokens only: a tokenizer without its vocabulary
    (transformers 5 ignores `vocab_file` and `merges_file` arguments) would score every prompt alike."""
    ids = tokenizer(text).input_ids
    if text.strip() and all(i in tokenizer.all_special_ids for i in ids):
        raise ValueError(
            f"the tokenizer in {where} turns {text!r} into start and end tokens only: its vocabulary is missing "
            "(save the tokenizer with save_pretrained and name its directory)"
        )


def required(value: str, key: str, reward: str, what: str) -> str:
    """`value`, or ValueError naming the reward option `key` and what it should name."""
    if not value:
        raise ValueError(f"the {reward} reward needs the reward option {key} ({what})")
    return value


def default_text(context, text: str, reward: str) -> str:
    """`text`, else the model's first prompt: what images are scored against where the caller
    passes no prompts; ValueError where neither exists."""
    text = text or (context.model.prompts[0] if context.model.prompts else "")
    if not text:
        raise ValueError(f"the {reward} reward needs the reward option text: the model has no prompt to score against")
    return text


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `size` (bicubic with antialiasing, the longer side truncated to
    an integer as transformers' CLIPImageProcessor and torchvision's Resize both do), centre crop
    to `crop` (height, width), normalise with `mean` and `std`. `offset` is how the crop's corner
    is placed: "floor" ((H - h) // 2, transformers' CLIPImageProcessor) or "round"
    (round((H - h) / 2), torchvision's CenterCrop). `eight_bit` follows PIL's resize of 8-bit
    images: a horizontal pass, then a vertical one, each clipped to [0, 1] (their rounding to
    1/255 is left out, so that gradients flow); without it the resize is one float pass, as
    torchvision's on tensors."""

    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    offset: str = "floor"
    eight_bit: bool = False

    def __post_init__(self):
        if self.offset not in ("floor", "round"):
            raise ValueError(f"offset must be 'floor' or 'round', got {self.offset!r}")
        if max(self.crop) > self.size:
            raise ValueError(f"a crop {self.crop} larger than the resized shorter side {self.size} is not supported")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        short, long = min(height, width), max(height, width)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if height <= width else (new_long, self.size)

    def _corner(self, extent: int, crop: int) -> int:
        return (extent - crop) // 2 if self.offset == "floor" else int(round((extent - crop) / 2.0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel values of `images` (B, 3, H, W) in [-1, 1]; differentiable."""
        x = (images + 1) / 2
        size = self.resized_size(*x.shape[-2:])
        passes = [(x.shape[-2], size[1]), size] if self.eight_bit else [size]
        for shape in passes:
            if shape != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=shape, mode="bicubic", antialias=True, align_corners=False)
                x = x.clamp(0, 1) if self.eight_bit else x
        top, left = self._corner(size[0], self.crop[0]), self._corner(size[1], self.crop[1])
        x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean.to(x)) / std.to(x)


class PromptScore(ModelReward):
    """`scale * cos(image embedding, text embedding)` of a CLIPModel, per image; `scale` is the
    model's `logit_scale.exp()` where `scaled` is set, else 1. Call with images (B, 3, H, W)
    in [-1, 1] and optionally `prompts` (one per image); without prompts every image is scored
    against `text`."""

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer,
        preprocess: Preprocess,
        text: str,
        scaled: bool,
        device: torch.device | str = "cpu",
    ):
        self.base = clip.to(device).eval().requires_grad_(False)
        super().__init__(self.base)
        self.tokenizer, self.preprocess, self.scaled, self.text = tokenizer, preprocess, scaled, text
        self.max_length = clip.config.text_config.max_position_embeddings
        self._texts: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def tokens(self, prompt: str) -> torch.Tensor:
        """Token ids (1, L) of one prompt, truncated to the text tower's context; no padding (the
        text tower is causal and pools at the end token, so padding after it changes nothing)."""
        return self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt").input_ids

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess(images)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (B, D), not normalised."""
        clip = self.model_for(images)
        return clip.visual_projection(clip.vision_model(pixel_values=self.pixels(images)).pooler_output)

    def text_embedding(self, prompt: str, like: torch.Tensor) -> torch.Tensor:
        """The normalised projected embedding (D,) of `prompt` in `like`'s dtype; cached, no graph."""
        key = (prompt, like.dtype, like.device)
        if key not in self._texts:
            clip = self.model_for(like)
            with torch.no_grad():
                ids = self.tokens(prompt).to(like.device)
                embedding = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)[0]
                self._texts[key] = F.normalize(embedding, dim=-1)
        return self._texts[key]

    def __call__(self, images: torch.Tensor, prompts: list[str] | tuple[str, ...] | None = None) -> torch.Tensor:
        texts = [self.text] * len(images) if prompts is None else list(prompts)
        if len(texts) != len(images):
            raise ValueError(f"one prompt per image: {len(images)} images, {len(texts)} prompts")
        text = torch.stack([self.text_embedding(prompt, images) for prompt in texts])
        cosine = (F.normalize(self.image_embeddings(images), dim=-1) * text).sum(-1)
        return self.model_for(images).logit_scale.exp() * cosine if self.scaled else cosine

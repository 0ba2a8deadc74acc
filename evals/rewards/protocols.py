"""The losses of the SDO authors' released scripts (github.com/deng-ai-lab/SDO), as rewards on RGB
images, each the minus of its script's loss computed the same way (clamps, resizes, normalisation,
random draws, reduction), from local CLIP weights only:

- `style_gram` (`style_guide_implict.py`): the mean squared difference of unnormalised Gram
  matrices of CLIP ViT-B/16 patch tokens after `layer` residual blocks (3), sample against a style
  image; images clamped to [-1, 1] and resized to CLIP's input by plain bicubic interpolation.
  Cost: `layer` blocks of one CLIP vision pass.
- `aesthetic_target` (`aesthetic_implict.py`): |a - target| with a = (0.5 a_L + 1.5 a_B) / 2, a_X
  the mean over 16 random square cutouts of the LAION linear aesthetic head (clamped to [1, 10])
  over CLIP ViT-L/14 and ViT-B/32 embeddings. Cost: two CLIP passes over 16 cutouts per image.
- `clip_guide` (`clip_guide_implict.py`): alpha * mean(-cos(CLIP ViT-B/32 of 20 DiffAugment
  copies, text)) + (1 - alpha) * mean |x - reference|, alpha 0 before iteration `alpha_from` (150)
  and `alpha` (0.5) from it on: the L1 term alone reconstructs the reference first. Cost: one CLIP
  pass over 20 copies per image from `alpha_from` on, none before.

The scripts draw their cutouts and augmentations afresh from the global random state at every
iteration. Here they come from a generator seeded by (`seed`, iteration), so the reward is a
deterministic function of the images within an iteration (finite differences hold); the harness
names the iteration by calling `at_iteration(i)` before each gradient (before any call: iteration
0), and evaluations between iterations see that iteration's draws and alpha. With `redraw` false
every iteration uses iteration 0's draws. Every image of a batch gets the same draws (the scripts
run one image), so a score does not depend on the batch it is computed in.

The scripts run CLIP in float16 on CUDA (style and guidance load OpenAI's CLIP in float16, the
aesthetic loss runs under autocast); here CLIP runs in the images' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPModel

from evals.rewards import register_reward
from evals.rewards.base import ModelReward
from evals.rewards.clip import aesthetic_head
from evals.rewards.diffaugment import Augmentation

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
STYLE_SIDE = 512  # the style image is centre-cropped and resized to 512 x 512 first (load_image_512)
LAION_HEADS = "github.com/LAION-AI/aesthetic-predictor"


def draw_seed(seed: int, iteration: int) -> int:
    """The seed of an iteration's random draws (torch and numpy generators take it)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def load_clip(path: str | Path, published: str) -> CLIPModel:
    """A transformers CLIPModel from a local directory; FileNotFoundError naming what is missing
    and where the published weights come from."""
    directory = Path(path).expanduser()
    contents = (
        f"the transformers CLIP model {published} (the same weights as OpenAI's release): a directory that "
        "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained wrote"
    )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory / 'config.json'} not found: {directory} should hold {contents}")
    try:
        return CLIPModel.from_pretrained(directory, local_files_only=True)
    except OSError as error:
        raise FileNotFoundError(f"{directory} is incomplete ({error}); it should hold {contents}") from error


def _file(path: str | Path, contents: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it should be {contents}")
    return path


def _vision(clip: CLIPModel, name: str = "") -> dict[str, nn.Module]:
    return {f"{name}vision": clip.vision_model, f"{name}projection": clip.visual_projection}


def _normalise(images01: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's normalisation of images in [0, 1]."""
    mean = torch.tensor(OPENAI_MEAN, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


def _embed(modules: nn.ModuleDict, pixels: torch.Tensor, name: str = "") -> torch.Tensor:
    """CLIP's projected image embeddings (N, D), not normalised."""
    return modules[f"{name}projection"](modules[f"{name}vision"](pixel_values=pixels).pooler_output)


class _Protocol(ModelReward):
    """A reward over frozen modules on `device`, run in the images' dtype, with derived tensors
    (reference Gram matrices, text embeddings) cached per dtype and device."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device | str):
        super().__init__(nn.ModuleDict(modules).to(device).eval().requires_grad_(False))
        self._cache: dict[tuple, torch.Tensor] = {}

    def cached(self, key: str, images: torch.Tensor, make) -> torch.Tensor:
        slot = (key, images.dtype, images.device)
        if slot not in self._cache:
            with torch.no_grad():
                self._cache[slot] = make(self.model_for(images))
        return self._cache[slot]


class _PerIteration(_Protocol):
    """A reward whose random draws (and schedule) follow the optimisation's iteration."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device | str, seed: int, redraw: bool):
        super().__init__(modules, device)
        self.seed, self.redraw, self.iteration = seed, redraw, 0

    def at_iteration(self, iteration: int) -> None:
        """The iteration whose draws (and alpha) the following calls use."""
        self.iteration = iteration

    @property
    def draws_seed(self) -> int:
        return draw_seed(self.seed, self.iteration if self.redraw else 0)


class StyleGram(_Protocol):
    """Minus the style script's loss: mean over D x D of (G(x) - G(style))^2 with G = F^T F, F the
    N x D patch tokens (CLS dropped) after `layer` residual blocks of CLIP's vision transformer
    (transformers' hidden_states[layer]; OpenAI CLIP's resblock outputs[layer - 1]), images clamped
    to [-1, 1], resized to CLIP's input side by bicubic interpolation without antialiasing and
    normalised. The style image is centre-cropped, resized to 512 x 512 (Lanczos), then treated
    the same way."""

    def __init__(self, clip_dir: str | Path, style_image: str | Path, layer: int = 3, device="cpu"):
        path = _file(style_image, "the style image (a file PIL can open)")
        clip = load_clip(clip_dir, "openai/clip-vit-base-patch16 (OpenAI CLIP ViT-B/16)")
        depth = clip.config.vision_config.num_hidden_layers
        if not 0 <= layer <= depth:
            raise ValueError(f"layer must lie in 0..{depth} (the CLIP vision model's depth), got {layer}")
        super().__init__(_vision(clip), device)
        self.layer, self.side = layer, clip.config.vision_config.image_size
        self.style = style_reference(path).to(device)

    def tokens(self, modules: nn.ModuleDict, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens (B, N, D) after `layer` blocks."""
        x = F.interpolate(images.clamp(-1, 1), size=(self.side, self.side), mode="bicubic", align_corners=False)
        vision = modules["vision"]
        hidden = vision.pre_layrnorm(vision.embeddings(_normalise((x + 1) / 2)))
        for block in vision.encoder.layers[: self.layer]:
            hidden = block(hidden, None)
        return hidden[:, 1:]

    def gram(self, modules: nn.ModuleDict, images: torch.Tensor) -> torch.Tensor:
        """F^T F (B, D, D), not normalised."""
        tokens = self.tokens(modules, images)
        return tokens.transpose(1, 2) @ tokens

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        reference = self.cached("style", images, lambda modules: self.gram(modules, self.style.to(images)))
        residual = self.gram(self.model_for(images), images) - reference
        residual = residual.to(torch.promote_types(residual.dtype, torch.float32))  # squares overflow float16
        return -(residual**2).mean(dim=(1, 2))


def style_reference(path: str | Path) -> torch.Tensor:
    """The style image as the script loads it: EXIF orientation applied, RGB, centre-cropped to a
    square, resized to 512 x 512 with Lanczos; (1, 3, 512, 512) float64 in [-1, 1]."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return _pm1(image.crop(box).resize((STYLE_SIDE, STYLE_SIDE), resample=Image.Resampling.LANCZOS))


def _pm1(image) -> torch.Tensor:
    """An RGB PIL image as the scripts read it: (1, 3, H, W) float64, pixel / 255 * 2 - 1."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float64) / 255.0 * 2.0 - 1.0)
    return pixels.permute(2, 0, 1).unsqueeze(0).contiguous()


def reference_image(path: str | Path) -> torch.Tensor:
    """The guidance script's reference image: RGB, (1, 3, H, W) float64 in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as opened:
        return _pm1(opened.convert("RGB"))


class AestheticTarget(_PerIteration):
    """Minus the aesthetic script's loss |a - target| (or plus a with no target), a the weighted
    mean (w_L a_L + w_B a_B) / 2 over two CLIPs of each one's LAION linear head over its
    L2-normalised embeddings, clamped to [1, 10] and averaged over `cutouts` squares: side
    int(u^cut_power (max - min) + min) (u uniform, max the image's shorter side, min the smaller
    of that and CLIP's input side), offsets uniform, average-pooled to CLIP's input side; pixels
    (x + 1) / 2 clamped to [0, 1]."""

    def __init__(
        self,
        clip_large: str | Path,
        clip_base: str | Path,
        head_large: str | Path,
        head_base: str | Path,
        weights: tuple[float, float] = (0.5, 1.5),
        cutouts: int = 16,
        cut_power: float = 0.3,
        target: float | None = 10.0,
        seed: int = 0,
        redraw: bool = True,
        device="cpu",
    ):
        heads = {
            "large": _laion_head(head_large, "ViT-L/14", "vit_l_14"),
            "base": _laion_head(head_base, "ViT-B/32", "vit_b_32"),
        }
        clips = {
            "large": load_clip(clip_large, "openai/clip-vit-large-patch14 (OpenAI CLIP ViT-L/14)"),
            "base": load_clip(clip_base, "openai/clip-vit-base-patch32 (OpenAI CLIP ViT-B/32)"),
        }
        for name, clip in clips.items():
            if heads[name][0].in_features != clip.config.projection_dim:
                raise ValueError(
                    f"the {name} aesthetic head takes {heads[name][0].in_features}-d embeddings, its CLIP model gives "
                    f"{clip.config.projection_dim}-d"
                )
        sides = {name: clip.config.vision_config.image_size for name, clip in clips.items()}
        if sides["large"] != sides["base"]:
            raise ValueError(f"both CLIP models must take one input side (the cutouts are shared), got {sides}")
        modules = {key: module for name, clip in clips.items() for key, module in _vision(clip, f"{name}_").items()}
        super().__init__({**modules, **{f"{name}_head": head for name, head in heads.items()}}, device, seed, redraw)
        self.side, self.weights, self.cutouts, self.cut_power = sides["large"], weights, cutouts, cut_power
        self.target = target

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """This iteration's cutouts as (side, left, top), drawn in the script's order."""
        generator = torch.Generator().manual_seed(self.draws_seed)
        largest, smallest = min(height, width), min(height, width, self.side)
        boxes = []
        for _ in range(self.cutouts):
            side = int(torch.rand((), generator=generator) ** self.cut_power * (largest - smallest) + smallest)
            left = int(torch.randint(0, width - side + 1, (), generator=generator))
            top = int(torch.randint(0, height - side + 1, (), generator=generator))
            boxes.append((side, left, top))
        return boxes

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """The weighted aesthetic score a per image."""
        pixels = ((images.clamp(-1, 1) / 2) + 0.5).clamp(0, 1)
        cuts = [
            F.adaptive_avg_pool2d(pixels[:, :, top : top + side, left : left + side], self.side)
            for side, left, top in self.boxes(*images.shape[-2:])
        ]
        batch = _normalise(torch.cat(cuts))
        modules = self.model_for(images)
        scores = []
        for name in ("large", "base"):
            embeddings = F.normalize(_embed(modules, batch, f"{name}_"), dim=-1)
            per_cut = modules[f"{name}_head"](embeddings).clamp(1, 10).view(self.cutouts, len(images))
            scores.append(per_cut.mean(0))
        return (self.weights[0] * scores[0] + self.weights[1] * scores[1]) / 2

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        score = self.score(images)
        return score if self.target is None else -(score - self.target).abs()


def _laion_head(path: str | Path, architecture: str, tag: str) -> nn.Sequential:
    contents = (
        f"the LAION linear aesthetic head for CLIP {architecture} (sa_0_4_{tag}_linear.pth, published in "
        f"{LAION_HEADS}; the script reads .cache/emb_reader/sa_0_4_{tag}_linear.pth)"
    )
    return aesthetic_head(_file(path, contents))


class ClipGuide(_PerIteration):
    """Minus the CLIP-guidance script's loss on images clamped to [-1, 1]: alpha * mean over
    `copies` DiffAugment copies (bilinearly resized to CLIP's input side, normalised) of -cos(CLIP
    image embedding, CLIP text embedding) + (1 - alpha) * mean |x - reference| (the reference
    resized to the images' size, bicubic with antialiasing, when it differs). alpha is 0 before
    iteration `alpha_from` and `alpha` from it on; images must be square."""

    def __init__(
        self,
        clip_dir: str | Path,
        text: str,
        reference: str | Path,
        copies: int = 20,
        alpha: float = 0.5,
        alpha_from: int = 150,
        seed: int = 0,
        redraw: bool = True,
        device="cpu",
    ):
        reference = reference_image(_file(reference, "the reference image (a file PIL can open)"))
        clip = load_clip(clip_dir, "openai/clip-vit-base-patch32 (OpenAI CLIP ViT-B/32)")
        self.tokenizer = AutoTokenizer.from_pretrained(Path(clip_dir).expanduser(), local_files_only=True)
        text_parts = {"text": clip.text_model, "text_projection": clip.text_projection}
        super().__init__({**_vision(clip), **text_parts}, device, seed, redraw)
        self.reference, self.text, self.side = reference.to(device), text, clip.config.vision_config.image_size
        self.copies, self.alpha, self.alpha_from = copies, alpha, alpha_from

    @property
    def current_alpha(self) -> float:
        """The weight of the CLIP term at the current iteration."""
        return self.alpha if self.iteration >= self.alpha_from else 0.0

    def augmentation(self, side: int) -> Augmentation:
        return Augmentation.draw(self.copies, side, self.draws_seed)

    def text_embedding(self, modules: nn.ModuleDict) -> torch.Tensor:
        tokens = self.tokenizer([self.text], padding=True, truncation=True, return_tensors="pt")
        tokens = tokens.to(modules["text_projection"].weight.device)
        return modules["text_projection"](modules["text"](**tokens).pooler_output)

    def l1(self, images: torch.Tensor) -> torch.Tensor:
        """Mean |x - reference| per image, on images clamped to [-1, 1]."""
        size = tuple(images.shape[-2:])
        reference = self.reference.to(images)
        if tuple(reference.shape[-2:]) != size:
            reference = F.interpolate(reference, size=size, mode="bicubic", antialias=True).clamp(-1, 1)
        return (images.clamp(-1, 1) - reference).abs().flatten(1).mean(1)

    def cosine(self, images: torch.Tensor) -> torch.Tensor:
        """cos(CLIP image, CLIP text) per augmented copy, (copies, B)."""
        copies = self.augmentation(images.shape[-1])(images.clamp(-1, 1))
        pixels = F.interpolate(copies, size=self.side, mode="bilinear", align_corners=False)
        modules = self.model_for(images)
        text = self.cached("text", images, self.text_embedding)
        cosine = F.cosine_similarity(_embed(modules, _normalise((pixels + 1) / 2)), text, dim=-1)
        return cosine.view(self.copies, len(images))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"clip_guide takes square images (DiffAugment's resize is square), got {height}x{width}")
        alpha = self.current_alpha
        loss = (1 - alpha) * self.l1(images)
        if alpha:
            loss = loss + alpha * (-self.cosine(images)).mean(0)
        return -loss


@dataclass
class StyleGramOptions:
    """`clip_model`: a local CLIP ViT-B/16 directory (openai/clip-vit-base-patch16); `image`: the
    style image; `layer`: how many residual blocks of CLIP's vision transformer the compared
    tokens pass (the script: 3)."""

    clip_model: str = ""
    image: str = ""
    layer: int = 3

    def __post_init__(self):
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0 (0: the embeddings, k: after k residual blocks), got {self.layer}")


@dataclass
class AestheticTargetOptions:
    """`clip_large`, `clip_base`: local CLIP ViT-L/14 and ViT-B/32 directories; `head_large`,
    `head_base`: their LAION linear aesthetic heads (sa_0_4_vit_l_14_linear.pth,
    sa_0_4_vit_b_32_linear.pth); `weight_large`, `weight_base`: their weights (the script: 0.5,
    1.5; the weighted sum is halved); `cutouts`: random square cutouts per image (16);
    `cut_power`: the exponent skewing cutout sides towards the image's (0.3); `target`: the
    score aimed at (10; none: maximise the score); `seed`: the cutouts' seed; `redraw`: fresh
    cutouts every iteration (as the script) or iteration 0's throughout."""

    clip_large: str = ""
    clip_base: str = ""
    head_large: str = ""
    head_base: str = ""
    weight_large: float = 0.5
    weight_base: float = 1.5
    cutouts: int = 16
    cut_power: float = 0.3
    target: float | None = 10.0
    seed: int = 0
    redraw: bool = True

    def __post_init__(self):
        for name in ("weight_large", "weight_base"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.weight_large + self.weight_base == 0:
            raise ValueError("weight_large and weight_base are both 0: the score would be constant")
        if self.cutouts < 1:
            raise ValueError(f"cutouts must be >= 1, got {self.cutouts}")
        if not (math.isfinite(self.cut_power) and self.cut_power > 0):
            raise ValueError(f"cut_power must be a finite number > 0, got {self.cut_power}")
        if self.target is not None and not math.isfinite(self.target):
            raise ValueError(f"target must be a finite number or none (maximise), got {self.target}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class ClipGuideOptions:
    """`clip_model`: a local CLIP ViT-B/32 directory (openai/clip-vit-base-patch32); `text`: the
    text the images should match (empty: the model's first prompt; the script: "A photo of a
    smile face."); `image`: the reference image of the L1 term; `copies`: DiffAugment copies per
    image (20); `alpha`: the weight of the CLIP term (1 - alpha weighs the L1 term) from iteration
    `alpha_from` on (0.5 from 150; before it alpha is 0, the L1 term alone); `seed`: the
    augmentations' seed; `redraw`: fresh augmentations every iteration (as the script) or
    iteration 0's throughout."""

    clip_model: str = ""
    text: str = ""
    image: str = ""
    copies: int = 20
    alpha: float = 0.5
    alpha_from: int = 150
    seed: int = 0
    redraw: bool = True

    def __post_init__(self):
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1] (it weighs the CLIP term, 1 - alpha the L1), got {self.alpha}")
        if self.alpha_from < 0:
            raise ValueError(f"alpha_from must be >= 0 (the first iteration with alpha), got {self.alpha_from}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def _given(value: str, key: str, reward: str) -> str:
    if not value:
        raise ValueError(f"the {reward} reward needs the reward option {key}")
    return value


@register_reward("style_gram", "rgb", StyleGramOptions)
def style_gram_reward(context, options: StyleGramOptions):
    clip_dir = _given(options.clip_model, "clip_model", "style_gram")
    return StyleGram(clip_dir, _given(options.image, "image", "style_gram"), options.layer, context.device)


@register_reward("aesthetic_target", "rgb", AestheticTargetOptions)
def aesthetic_target_reward(context, options: AestheticTargetOptions):
    keys = ("clip_large", "clip_base", "head_large", "head_base")
    paths = [_given(getattr(options, key), key, "aesthetic_target") for key in keys]
    return AestheticTarget(
        *paths,
        weights=(options.weight_large, options.weight_base),
        cutouts=options.cutouts,
        cut_power=options.cut_power,
        target=options.target,
        seed=options.seed,
        redraw=options.redraw,
        device=context.device,
    )


@register_reward("clip_guide", "rgb", ClipGuideOptions)
def clip_guide_reward(context, options: ClipGuideOptions):
    text = options.text or (context.model.prompts[0] if context.model.prompts else "")
    return ClipGuide(
        _given(options.clip_model, "clip_model", "clip_guide"),
        _given(text, "text", "clip_guide"),
        _given(options.image, "image", "clip_guide"),
        copies=options.copies,
        alpha=options.alpha,
        alpha_from=options.alpha_from,
        seed=options.seed,
        redraw=options.redraw,
        device=context.device,
    )

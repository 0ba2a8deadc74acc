"""PickScore (Kirstain et al., "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on human preferences
between generated images, scored as its published inference code does:
`logit_scale.exp() * cos(image embedding, text embedding)` with the model's own logit scale
(about 100), each image against its prompt.

The weights are a transformers CLIPModel directory (huggingface.co/yuvalkirstain/PickScore_v1);
the preprocessing and tokenizer are those of the CLIPProcessor the authors use
(laion/CLIP-ViT-H-14-laion2B-s32B-b79K), from the model directory itself or a separate
processor directory. The preprocessing (bicubic resize of the shorter side, centre crop,
normalisation) runs in torch; it matches CLIPImageProcessor on PIL images up to PIL's 8-bit
rounding. Cost: one ViT-H/14 vision pass per call; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPProcessor

from evals.rewards import register_reward
from evals.rewards.clip_towers import Preprocess, PromptScore, check_tokenizer, default_text, existing, required

MODEL_CONTENTS = (
    "the PickScore model: a transformers CLIPModel directory (config.json and weights, as "
    "huggingface.co/yuvalkirstain/PickScore_v1 holds them)"
)
PROCESSOR_CONTENTS = (
    "a CLIPProcessor directory (preprocessor_config.json and the tokenizer files, as "
    "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K holds them for PickScore)"
)
BICUBIC = 3  # PIL's and transformers' code for bicubic resampling


def processor_preprocess(image_processor) -> Preprocess:
    """The torch preprocessing equivalent to a CLIPImageProcessor's (shortest-edge resize,
    centre crop, normalisation)."""
    if image_processor.resample != BICUBIC:
        code = image_processor.resample
        raise ValueError(f"the image processor resamples with code {code}; only bicubic ({BICUBIC}) is written here")
    return Preprocess(
        size=image_processor.size["shortest_edge"],
        crop=(image_processor.crop_size["height"], image_processor.crop_size["width"]),
        mean=tuple(image_processor.image_mean),
        std=tuple(image_processor.image_std),
        offset="floor",
        eight_bit=True,
    )


class PickScore(PromptScore):
    """PickScore of images against prompts (or `text`), from local directories."""

    def __init__(
        self, model_dir: str | Path, text: str, processor_dir: str | Path = "", device: torch.device | str = "cpu"
    ):
        model_dir = existing(model_dir, MODEL_CONTENTS)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"{model_dir} has no config.json: it should be {MODEL_CONTENTS}")
        processor_dir = existing(processor_dir or model_dir, PROCESSOR_CONTENTS)
        try:
            processor = CLIPProcessor.from_pretrained(processor_dir, local_files_only=True)
        except OSError as error:
            message = f"{processor_dir} is incomplete ({error}); it should be {PROCESSOR_CONTENTS}"
            raise FileNotFoundError(message) from error
        check_tokenizer(processor.tokenizer, text, processor_dir)
        try:
            clip = CLIPModel.from_pretrained(model_dir, local_files_only=True)
        except OSError as error:
            raise FileNotFoundError(f"{model_dir} is incomplete ({error}); it should be {MODEL_CONTENTS}") from error
        preprocess = processor_preprocess(processor.image_processor)
        super().__init__(clip, processor.tokenizer, preprocess, text, scaled=True, device=device)


@dataclass
class PickScoreOptions:
    """`model`: the PickScore CLIPModel directory; `processor`: a CLIPProcessor directory (empty:
    the model directory); `text`: the prompt images are scored against where the caller passes
    none (empty: the model's first prompt)."""

    model: str = ""
    processor: str = ""
    text: str = ""


@register_reward("pickscore", "rgb", PickScoreOptions)
def pickscore_reward(context, options: PickScoreOptions):
    model = required(options.model, "model", "pickscore", "a PickScore_v1 directory")
    return PickScore(model, default_text(context, options.text, "pickscore"), options.processor, context.device)

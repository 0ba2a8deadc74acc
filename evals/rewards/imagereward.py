"""ImageReward (Xu et al., "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation"): BLIP's ViT-L/16 image encoder, a BERT-base text encoder that
cross-attends to the image tokens, and an MLP on the text's [CLS] output, standardised with
the published mean and std, scored as `ImageReward.score` does.

The published weights (huggingface.co/THUDM/ImageReward: ImageReward.pt, a state dict, and
med_config.json, the text encoder's BERT configuration) load onto transformers' BLIP towers:
BLIP's ViT is timm's layout (`patch_embed.proj` with bias, `cls_token`, `pos_embed`, blocks
with fused `qkv`, final `norm`), which `BlipVisionModel` mirrors key for key; the text encoder
is BLIP's `med.py` BertModel, which `BlipTextModel` (configured with cross-attention, run
bidirectionally) ports with the same module names. The vision tower's sizes come from the
checkpoint's shapes (head count from the `vision_heads` option: 16 for ViT-L/16), the text
tower's from med_config.json with BLIP's `encoder_width` set to the vision width. Keys the score
does not use (`blip.vision_proj`, `blip.text_proj`, the position-id buffer) are skipped; any
other key the mapping does not place is refused.

Preprocessing as ImageReward's transform (Resize(224, bicubic) of the shorter side, CenterCrop,
ToTensor, Normalize with OpenAI's mean and std), in torch; the original resizes 8-bit PIL images,
so pixel values agree up to that rounding. The tokenizer is bert-base-uncased's (BLIP's two
added tokens are not used when scoring), truncated to 35 tokens. Cost: one ViT-L/16 pass and one
BERT pass with cross-attention per image and call; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    BatchEncoding,
    BertTokenizer,
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
)
from transformers.initialization import no_init_weights

from evals.rewards import register_reward
from evals.rewards.base import ModelReward
from evals.rewards.clip_towers import Preprocess, check_tokenizer, default_text, existing, load_tokenizer, required

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.mean, ImageReward.std
MAX_TOKENS = 35  # ImageReward.score's max_length
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_CONTENTS = "ImageReward.pt, the ImageReward state dict from huggingface.co/THUDM/ImageReward"
MED_CONFIG_CONTENTS = "med_config.json, the text encoder's configuration from huggingface.co/THUDM/ImageReward"
TOKENIZER_CONTENTS = (
    "a BERT tokenizer directory (vocab.txt and tokenizer configuration, as BertTokenizer.save_pretrained writes them; "
    "bert-base-uncased's is the one ImageReward uses)"
)
VISION = "blip.visual_encoder."
TEXT = "blip.text_encoder."
HEAD = "mlp.layers."
SKIPPED = {
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    f"{TEXT}embeddings.position_ids",
}


def vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BlipVisionModel's state dict from BLIP's ViT keys (prefix removed)."""
    names = {
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "attn.qkv": "self_attn.qkv",
        "attn.proj": "self_attn.projection",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    mapped = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            index, rest = key[len("blocks.") :].split(".", 1)
            module, parameter = rest.rsplit(".", 1)
            if module not in names:
                raise ValueError(f"BLIP ViT key {key!r} has no place in BlipVisionModel")
            mapped[f"encoder.layers.{index}.{names[module]}.{parameter}"] = value
            continue
        fixed = {
            "cls_token": "embeddings.class_embedding",
            "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight",
            "norm.bias": "post_layernorm.bias",
        }
        if key not in fixed:
            raise ValueError(f"BLIP ViT key {key!r} has no place in BlipVisionModel")
        mapped[fixed[key]] = value
    return mapped


def vision_config(state: dict[str, torch.Tensor], heads: int) -> BlipVisionConfig:
    """BLIP ViT's configuration from its weights' shapes (MLP ratio 4, LayerNorm eps 1e-6, GELU)."""
    width, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
    grid = math.isqrt(state["embeddings.position_embedding"].shape[1] - 1)
    depth = len({key.split(".")[2] for key in state if key.startswith("encoder.layers.")})
    if width % heads:
        raise ValueError(f"vision_heads {heads} does not divide the ViT width {width}")
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def text_config(med_config: dict, encoder_width: int) -> BlipTextConfig:
    """BlipTextConfig of BLIP's med.py BertModel from med_config.json, cross-attending to
    `encoder_width`-wide image tokens."""
    if not med_config.get("add_cross_attention"):
        raise ValueError("med_config.json must set add_cross_attention: the text encoder cross-attends to the image")
    if med_config.get("position_embedding_type", "absolute") != "absolute":
        kind = med_config["position_embedding_type"]
        raise ValueError(f"position_embedding_type {kind!r} is not supported (absolute only)")
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "pad_token_id",
    )
    return BlipTextConfig(
        **{key: med_config[key] for key in keys},
        encoder_hidden_size=encoder_width,
        is_decoder=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def mlp_head(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """ImageReward's MLP: its linear layers in order (Dropout between, no activations)."""
    indices = sorted({int(key.split(".")[0]) for key in state})
    if not indices or set(state) != {f"{i}.{p}" for i in indices for p in ("weight", "bias")}:
        raise ValueError(f"the MLP head's keys are not linear layers: {sorted(state)}")
    head = nn.Sequential(*(nn.Linear(*state[f"{i}.weight"].shape[::-1]) for i in indices))
    head.load_state_dict({f"{n}.{p}": state[f"{i}.{p}"] for n, i in enumerate(indices) for p in ("weight", "bias")})
    return head


def _part(state: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def load_image_reward(checkpoint: str | Path, med_config: str | Path, vision_heads: int = 16) -> nn.ModuleDict:
    """ImageReward's networks from its published files: `vision` (BlipVisionModel), `text`
    (BlipTextModel), `head` (the MLP); float32."""
    checkpoint = existing(checkpoint, CHECKPOINT_CONTENTS)
    med = json.loads(existing(med_config, MED_CONFIG_CONTENTS).read_text())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    stray = sorted(key for key in state if key not in SKIPPED and not key.startswith((VISION, TEXT, HEAD)))
    if stray:
        raise ValueError(f"{checkpoint} holds keys that are not ImageReward's: {stray[:5]}")
    vision = vision_state(_part(state, VISION))
    text = {key: value for key, value in _part(state, TEXT).items() if f"{TEXT}{key}" not in SKIPPED}
    width = vision["embeddings.patch_embedding.weight"].shape[0]
    with no_init_weights():
        networks = nn.ModuleDict(
            {
                "vision": BlipVisionModel(vision_config(vision, vision_heads)),
                "text": BlipTextModel(text_config(med, width), add_pooling_layer=False),
            }
        )
    for name, weights in (("vision", vision), ("text", text)):
        try:
            networks[name].load_state_dict({key: value.float() for key, value in weights.items()}, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{checkpoint} does not fit ImageReward's {name} tower ({med_config}): {error}") from None
    networks["head"] = mlp_head({key: value.float() for key, value in _part(state, HEAD).items()})
    return networks


class ImageReward(ModelReward):
    """ImageReward of images against prompts (or `text`): `(mlp(text_encoder([CLS] | image)) - mean) / std`
    per image. Call with images (B, 3, H, W) in [-1, 1] and optionally `prompts` (one per image)."""

    def __init__(
        self,
        checkpoint: str | Path,
        text: str,
        med_config: str | Path = "",
        tokenizer_dir: str | Path = "",
        vision_heads: int = 16,
        device: torch.device | str = "cpu",
    ):
        checkpoint = existing(checkpoint, CHECKPOINT_CONTENTS)
        tokenizer_dir = tokenizer_dir or checkpoint.parent
        self.tokenizer = load_tokenizer(BertTokenizer, tokenizer_dir, TOKENIZER_CONTENTS)
        check_tokenizer(self.tokenizer, text, tokenizer_dir)
        networks = load_image_reward(checkpoint, med_config or checkpoint.parent / "med_config.json", vision_heads)
        self.base = networks.to(device).eval().requires_grad_(False)
        super().__init__(self.base)
        size = self.base["vision"].config.image_size
        self.preprocess = Preprocess(size, (size, size), OPENAI_MEAN, OPENAI_STD, offset="round", eight_bit=True)
        self.text = text

    def tokens(self, prompts: list[str]) -> BatchEncoding:
        """Token ids and attention mask (N, L) of `prompts`, truncated to 35 tokens as ImageReward does
        (padding to the longest is masked, so it changes nothing)."""
        return self.tokenizer(prompts, padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess(images)

    def __call__(self, images: torch.Tensor, prompts: list[str] | tuple[str, ...] | None = None) -> torch.Tensor:
        texts = [self.text] * len(images) if prompts is None else list(prompts)
        if len(texts) != len(images):
            raise ValueError(f"one prompt per image: {len(images)} images, {len(texts)} prompts")
        networks = self.model_for(images)
        image_tokens = networks["vision"](pixel_values=self.pixels(images)).last_hidden_state
        tokens = self.tokens(texts).to(images.device)
        hidden = networks["text"](
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_tokens,
            is_decoder=False,
        ).last_hidden_state
        return ((networks["head"](hidden[:, 0]) - MEAN) / STD).squeeze(-1)


@dataclass
class ImageRewardOptions:
    """`checkpoint`: ImageReward.pt; `med_config`: its med_config.json (empty: beside the
    checkpoint); `tokenizer`: a bert-base-uncased tokenizer directory (empty: the checkpoint's
    folder); `vision_heads`: the ViT's attention heads (16 for ViT-L/16); `text`: the prompt images
    are scored against where the caller passes none (empty: the model's first prompt)."""

    checkpoint: str = ""
    med_config: str = ""
    tokenizer: str = ""
    vision_heads: int = 16
    text: str = ""

    def __post_init__(self):
        if self.vision_heads < 1:
            raise ValueError(f"vision_heads must be a positive integer, got {self.vision_heads}")


@register_reward("imagereward", "rgb", ImageRewardOptions)
def imagereward_reward(context, options: ImageRewardOptions):
    checkpoint = required(options.checkpoint, "checkpoint", "imagereward", "ImageReward.pt")
    text = default_text(context, options.text, "imagereward")
    return ImageReward(checkpoint, text, options.med_config, options.tokenizer, options.vision_heads, context.device)

"""HPSv2 and HPSv2.1 (Wu et al., "Human Preference Score v2"): an open_clip ViT-H-14 fine-tuned
on human preferences, scored as `hpsv2.score` does: the cosine of the normalised image and text
features (`image_features @ text_features.T`, its diagonal; no logit scale).

The published weights are open_clip state dicts (huggingface.co/xswu/HPSv2:
HPS_v2_compressed.pt, HPS_v2.1_compressed.pt, a dict whose 'state_dict' open_clip loads
strictly). open_clip itself is not a dependency (it needs torchvision): its ViT's layout maps
one to one onto transformers' CLIPModel (bias-free patch convolution, class and positional
embeddings, `ln_pre`, pre-norm residual blocks whose fused `in_proj` splits into q, k, v,
`ln_post` on the class token, `proj`; the causal text tower pooled at the end token,
`ln_final`, `text_projection`), which `from_open_clip` does, refusing any key it does not place.
HPSv2's evaluation transform runs on tensors: ToTensor, Resize(224, bicubic; torchvision 0.17 and
later antialias tensors) of the shorter side, CenterCrop(224) (corner at round((H - 224) / 2)),
Normalize with OpenAI's mean and std; written here in torch. The tokenizer is a local CLIP
tokenizer directory: transformers' CLIPTokenizer over OpenAI CLIP's BPE (as
laion/CLIP-ViT-H-14-laion2B-s32B-b79K ships it) gives open_clip's token ids, except that open_clip
also unescapes HTML entities ("&amp;"). Cost: one ViT-H/14 vision pass per call; nothing is
downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.initialization import no_init_weights

from evals.rewards import register_reward
from evals.rewards.clip_towers import (
    Preprocess,
    PromptScore,
    check_tokenizer,
    default_text,
    existing,
    load_tokenizer,
    required,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ARCHITECTURES = {  # open_clip's model_configs/ViT-H-14.json
    "ViT-H-14": {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
    }
}
VISION_DEFAULTS = {"image_size": 224, "layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16}
TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
UNSUPPORTED = (  # open_clip options that change the network's layout; each must be off
    "custom_text",
    "ls_init_value",
    "input_patchnorm",
    "global_average_pool",
    "attentional_pool",
    "timm_model_name",
    "hf_model_name",
    "embed_cls",
)
CHECKPOINT_CONTENTS = (
    "the HPSv2 weights: HPS_v2_compressed.pt or HPS_v2.1_compressed.pt from huggingface.co/xswu/HPSv2 (an open_clip "
    "state dict, or a .safetensors file with its keys)"
)
TOKENIZER_CONTENTS = (
    "a CLIP tokenizer directory (tokenizer.json or vocab.json and merges.txt, as CLIPTokenizer.save_pretrained "
    "writes them; huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K holds the tokenizer HPSv2 uses)"
)


def open_clip_architecture(architecture: str) -> dict:
    """An open_clip model config: a name in ARCHITECTURES or the path of a JSON file in open_clip's
    model_configs format, with its vision and text sizes filled in from open_clip's defaults;
    ValueError for what this mapping does not build (ResNet or timm towers, layer scale, ...)."""
    if architecture in ARCHITECTURES:
        config = ARCHITECTURES[architecture]
    elif architecture.endswith(".json"):
        path = existing(architecture, "an open_clip model config (.json, as in open_clip's model_configs)")
        config = json.loads(path.read_text())
    else:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)} or an open_clip model config .json, "
            f"got {architecture!r}"
        )
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    for scope in (config, vision, text):
        on = [key for key in UNSUPPORTED if scope.get(key)]
        if on:
            raise ValueError(f"open_clip architecture {architecture!r} sets {on}: not supported by the mapping")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"open_clip architecture {architecture!r} has a ResNet image tower: not supported")
    return {
        "embed_dim": config["embed_dim"],
        "quick_gelu": bool(config.get("quick_gelu", False)),
        "vision": {key: vision.get(key, default) for key, default in VISION_DEFAULTS.items()},
        "text": {key: text.get(key, default) for key, default in TEXT_DEFAULTS.items()},
    }


def clip_config(architecture: dict, tokenizer) -> CLIPConfig:
    """transformers' CLIPConfig of an open_clip architecture (`open_clip_architecture`), with the
    tokenizer's start, end and padding ids (the text tower pools at the first end token, as
    open_clip's argmax over ids does: the end token is the highest id)."""
    vision, text = architecture["vision"], architecture["text"]
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the text tower's vocabulary {text['vocab_size']}")
    activation = "quick_gelu" if architecture["quick_gelu"] else "gelu"
    return CLIPConfig(
        text_config=dict(
            vocab_size=text["vocab_size"],
            hidden_size=text["width"],
            intermediate_size=int(text["width"] * text["mlp_ratio"]),
            num_hidden_layers=text["layers"],
            num_attention_heads=text["heads"],
            max_position_embeddings=text["context_length"],
            hidden_act=activation,
            layer_norm_eps=1e-5,
            projection_dim=architecture["embed_dim"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=vision["width"],
            intermediate_size=int(vision["width"] * vision["mlp_ratio"]),
            num_hidden_layers=vision["layers"],
            num_attention_heads=vision["width"] // vision["head_width"],
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            hidden_act=activation,
            layer_norm_eps=1e-5,
            projection_dim=architecture["embed_dim"],
        ),
        projection_dim=architecture["embed_dim"],
    )


def _blocks(prefix: str, target: str, layers: int) -> dict[str, str]:
    names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    return {
        f"{prefix}.{i}.{source}.{p}": f"{target}.{i}.{name}.{p}"
        for i in range(layers)
        for source, name in names.items()
        for p in ("weight", "bias")
    }


def _first(keys: list[str], count: int = 5) -> str:
    return f"{keys[:count]}{' ...' if len(keys) > count else ''}"


def from_open_clip(state: dict[str, torch.Tensor], architecture: dict) -> dict[str, torch.Tensor]:
    """transformers CLIPModel's state dict from open_clip CLIP's; ValueError naming keys that are
    missing or that the mapping does not place."""
    vision_layers, text_layers = architecture["vision"]["layers"], architecture["text"]["layers"]
    renamed = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        **{f"visual.ln_pre.{p}": f"vision_model.pre_layrnorm.{p}" for p in ("weight", "bias")},
        **{f"visual.ln_post.{p}": f"vision_model.post_layernorm.{p}" for p in ("weight", "bias")},
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        **{f"ln_final.{p}": f"text_model.final_layer_norm.{p}" for p in ("weight", "bias")},
        "logit_scale": "logit_scale",
        **_blocks("visual.transformer.resblocks", "vision_model.encoder.layers", vision_layers),
        **_blocks("transformer.resblocks", "text_model.encoder.layers", text_layers),
    }
    transposed = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
    fused = {
        **{
            f"visual.transformer.resblocks.{i}.attn": f"vision_model.encoder.layers.{i}.self_attn"
            for i in range(vision_layers)
        },
        **{f"transformer.resblocks.{i}.attn": f"text_model.encoder.layers.{i}.self_attn" for i in range(text_layers)},
    }
    expected = {*renamed, *transposed, *(f"{k}.in_proj_{p}" for k in fused for p in ("weight", "bias"))}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"not an open_clip CLIP state dict of this architecture: missing {_first(missing)}, "
            f"unexpected {_first(unexpected)}"
        )
    mapped = {target: state[source] for source, target in renamed.items()}
    mapped.update({target: state[source].T for source, target in transposed.items()})
    for source, target in fused.items():
        for p in ("weight", "bias"):
            q, k, v = state[f"{source}.in_proj_{p}"].chunk(3)
            mapped.update({f"{target}.q_proj.{p}": q, f"{target}.k_proj.{p}": k, f"{target}.v_proj.{p}": v})
    return mapped


def open_clip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an open_clip checkpoint: a torch file holding it (bare, or under
    'state_dict' as HPSv2's checkpoints do) or a .safetensors file."""
    path = existing(path, CHECKPOINT_CONTENTS)
    if path.suffix == ".safetensors":
        return load_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint


def load_open_clip(checkpoint: str | Path, architecture: str, tokenizer) -> CLIPModel:
    """An open_clip CLIP checkpoint as a float32 transformers CLIPModel."""
    layout = open_clip_architecture(architecture)
    state = from_open_clip(open_clip_state(checkpoint), layout)
    with no_init_weights():
        clip = CLIPModel(clip_config(layout, tokenizer))
    try:
        clip.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not fit the architecture {architecture!r}: {error}") from None
    return clip


class HpsV2(PromptScore):
    """HPSv2 (or v2.1, by its checkpoint) of images against prompts (or `text`)."""

    def __init__(
        self,
        checkpoint: str | Path,
        text: str,
        tokenizer_dir: str | Path = "",
        architecture: str = "ViT-H-14",
        device: torch.device | str = "cpu",
    ):
        checkpoint = existing(checkpoint, CHECKPOINT_CONTENTS)
        tokenizer_dir = tokenizer_dir or checkpoint.parent
        tokenizer = load_tokenizer(CLIPTokenizer, tokenizer_dir, TOKENIZER_CONTENTS)
        check_tokenizer(tokenizer, text, tokenizer_dir)
        clip = load_open_clip(checkpoint, architecture, tokenizer)
        size = clip.config.vision_config.image_size
        preprocess = Preprocess(size=size, crop=(size, size), mean=OPENAI_MEAN, std=OPENAI_STD, offset="round")
        super().__init__(clip, tokenizer, preprocess, text, scaled=False, device=device)


@dataclass
class HpsOptions:
    """`checkpoint`: HPS_v2_compressed.pt (HPSv2) or HPS_v2.1_compressed.pt (HPSv2.1); `tokenizer`:
    a CLIP tokenizer directory (empty: the checkpoint's folder); `architecture`: ViT-H-14 or an
    open_clip model config .json; `text`: the prompt images are scored against where the caller
    passes none (empty: the model's first prompt)."""

    checkpoint: str = ""
    tokenizer: str = ""
    architecture: str = "ViT-H-14"
    text: str = ""

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES and not self.architecture.endswith(".json"):
            raise ValueError(
                f"architecture must be one of {sorted(ARCHITECTURES)} or an open_clip model config .json, "
                f"got {self.architecture!r}"
            )


@register_reward("hpsv2", "rgb", HpsOptions)
def hpsv2_reward(context, options: HpsOptions):
    checkpoint = required(options.checkpoint, "checkpoint", "hpsv2", "HPS_v2_compressed.pt or HPS_v2.1_compressed.pt")
    text = default_text(context, options.text, "hpsv2")
    return HpsV2(checkpoint, text, options.tokenizer, options.architecture, context.device)

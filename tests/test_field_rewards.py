"""PickScore, HPSv2 and ImageReward on tiny random weights in their published layouts: the torch
preprocessing against the original transforms, the scores against the original scoring code,
gradients against finite differences, per-image prompts, missing files refused when the reward
is built, the published sizes, and optimisation runs on a tiny Stable Diffusion pipeline.

PickScore's original code (transformers' CLIPModel and CLIPProcessor) runs here. HPSv2's and
ImageReward's need torchvision, timm and older transformers, so their numbers were produced once
in a separate environment by the published code (HPSv2's open_clip copy, ImageReward's BLIP) on
the weights that `open_clip_state` and `image_reward_state` rebuild from the stored seed, and are
stored in tests/data/field_rewards/ with the tiny configs and a checksum of the weights.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_pipelines import build_tiny_sd
from transformers import (
    BertTokenizer,
    BlipTextModel,
    BlipVisionModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from evals.domains.rgb import RgbContext
from evals.rewards import build_reward
from evals.rewards.checks import check_differentiable
from evals.rewards.hpsv2 import ARCHITECTURES, HpsV2, clip_config, from_open_clip, open_clip_architecture
from evals.rewards.imagereward import ImageReward, text_config, vision_config, vision_state
from evals.rewards.pickscore import PickScore
from sdo.models.pipelines import character_tokenizer

DATA = Path(__file__).parent / "data" / "field_rewards"
HPS = json.loads((DATA / "hpsv2.json").read_text())
IR = json.loads((DATA / "imagereward.json").read_text())
PROMPTS = HPS["prompts"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EIGHT_BIT = 1.5 / 255 / min(OPENAI_STD)  # PIL rounds each resize pass to 1/255: the normalised tolerance
SHAPES = [(40, 44), (24, 37), (50, 30), (64, 64), (33, 33), (100, 150)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


# ----------------------------------------------------------------- tiny weights, published layouts
def fill(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Random weights drawn in sorted order of names: norm gains 1 + 0.1 N, biases 0.1 N, weight
    matrices N / sqrt(fan-in), other tensors 0.3 N, logit_scale log(1 / 0.07) + 0.1 N."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=generator)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight" and any(part in name for part in ("ln_", "norm", "LayerNorm")):
            state[name] = 1 + 0.1 * noise
        elif leaf in ("bias", "in_proj_bias"):
            state[name] = 0.1 * noise
        elif name == "logit_scale":
            state[name] = math.log(1 / 0.07) + 0.1 * noise
        elif leaf in ("weight", "in_proj_weight") and len(shape) >= 2:
            state[name] = noise / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = 0.3 * noise
    return state


def _block(prefix: str, width: int, mlp: int) -> dict[str, tuple]:
    return {
        f"{prefix}ln_1.weight": (width,),
        f"{prefix}ln_1.bias": (width,),
        f"{prefix}attn.in_proj_weight": (3 * width, width),
        f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width),
        f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,),
        f"{prefix}ln_2.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (mlp, width),
        f"{prefix}mlp.c_fc.bias": (mlp,),
        f"{prefix}mlp.c_proj.weight": (width, mlp),
        f"{prefix}mlp.c_proj.bias": (width,),
    }


def open_clip_shapes(config: dict) -> dict[str, tuple]:
    """open_clip CLIP's parameter names and shapes (open_clip/model.py, transformer.py)."""
    vision, text, embed = config["vision_cfg"], config["text_cfg"], config["embed_dim"]
    width, patch, grid = vision["width"], vision["patch_size"], vision["image_size"] // vision["patch_size"]
    shapes = {
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width),
        "visual.proj": (width, embed),
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.ln_pre.weight": (width,),
        "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,),
        "visual.ln_post.bias": (width,),
        "positional_embedding": (text["context_length"], text["width"]),
        "text_projection": (text["width"], embed),
        "logit_scale": (),
        "token_embedding.weight": (text["vocab_size"], text["width"]),
        "ln_final.weight": (text["width"],),
        "ln_final.bias": (text["width"],),
    }
    for i in range(vision["layers"]):
        shapes.update(_block(f"visual.transformer.resblocks.{i}.", width, 4 * width))
    for i in range(text["layers"]):
        shapes.update(_block(f"transformer.resblocks.{i}.", text["width"], 4 * text["width"]))
    return shapes


def open_clip_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    return fill(open_clip_shapes(config), seed)


def image_reward_shapes(vision: dict, med: dict) -> dict[str, tuple]:
    """ImageReward's parameter names and shapes: BLIP's ViT (vit.py), med.py's BertModel with
    cross-attention to the image tokens, BLIP_Pretrain's vision_proj and text_proj, MLP(hidden)."""
    width, patch, count = vision["width"], vision["patch_size"], (vision["image_size"] // vision["patch_size"]) ** 2
    v = "blip.visual_encoder."
    shapes = {
        f"{v}cls_token": (1, 1, width),
        f"{v}pos_embed": (1, count + 1, width),
        f"{v}patch_embed.proj.weight": (width, 3, patch, patch),
        f"{v}patch_embed.proj.bias": (width,),
        f"{v}norm.weight": (width,),
        f"{v}norm.bias": (width,),
    }
    for i in range(vision["depth"]):
        b = f"{v}blocks.{i}."
        shapes.update(
            {
                f"{b}norm1.weight": (width,),
                f"{b}norm1.bias": (width,),
                f"{b}attn.qkv.weight": (3 * width, width),
                f"{b}attn.qkv.bias": (3 * width,),
                f"{b}attn.proj.weight": (width, width),
                f"{b}attn.proj.bias": (width,),
                f"{b}norm2.weight": (width,),
                f"{b}norm2.bias": (width,),
                f"{b}mlp.fc1.weight": (4 * width, width),
                f"{b}mlp.fc1.bias": (4 * width,),
                f"{b}mlp.fc2.weight": (width, 4 * width),
                f"{b}mlp.fc2.bias": (width,),
            }
        )
    hidden, inner, t = med["hidden_size"], med["intermediate_size"], "blip.text_encoder."
    shapes.update(
        {
            f"{t}embeddings.word_embeddings.weight": (med["vocab_size"], hidden),
            f"{t}embeddings.position_embeddings.weight": (med["max_position_embeddings"], hidden),
            f"{t}embeddings.LayerNorm.weight": (hidden,),
            f"{t}embeddings.LayerNorm.bias": (hidden,),
        }
    )
    for i in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for attention, source in (("attention", hidden), ("crossattention", width)):
            shapes.update(
                {
                    f"{b}{attention}.self.query.weight": (hidden, hidden),
                    f"{b}{attention}.self.query.bias": (hidden,),
                    f"{b}{attention}.self.key.weight": (hidden, source),
                    f"{b}{attention}.self.key.bias": (hidden,),
                    f"{b}{attention}.self.value.weight": (hidden, source),
                    f"{b}{attention}.self.value.bias": (hidden,),
                    f"{b}{attention}.output.dense.weight": (hidden, hidden),
                    f"{b}{attention}.output.dense.bias": (hidden,),
                    f"{b}{attention}.output.LayerNorm.weight": (hidden,),
                    f"{b}{attention}.output.LayerNorm.bias": (hidden,),
                }
            )
        shapes.update(
            {
                f"{b}intermediate.dense.weight": (inner, hidden),
                f"{b}intermediate.dense.bias": (inner,),
                f"{b}output.dense.weight": (hidden, inner),
                f"{b}output.dense.bias": (hidden,),
                f"{b}output.LayerNorm.weight": (hidden,),
                f"{b}output.LayerNorm.bias": (hidden,),
            }
        )
    shapes.update(
        {
            "blip.vision_proj.weight": (256, width),
            "blip.vision_proj.bias": (256,),
            "blip.text_proj.weight": (256, hidden),
            "blip.text_proj.bias": (256,),
        }
    )
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), ((hidden, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        shapes.update({f"mlp.layers.{index}.weight": (fan_out, fan_in), f"mlp.layers.{index}.bias": (fan_out,)})
    return shapes


def image_reward_state(vision: dict, med: dict, seed: int) -> dict[str, torch.Tensor]:
    """ImageReward.pt's layout with random weights, med.py's persistent position-id buffer included."""
    state = fill(image_reward_shapes(vision, med), seed)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"]).expand((1, -1))
    return state


def checksum(state: dict[str, torch.Tensor]) -> float:
    """A number that changes with any weight, name or order."""
    return sum(float(value.double().sum()) * (i + 1) for i, (_, value) in enumerate(sorted(state.items())))


def bert_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer over single characters (BERT's special tokens first, [PAD] = 0)."""
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + ["##" + c for c in chars] + list(".,!?-")
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})


def reference_images(record: dict) -> torch.Tensor:
    """The stored record's uint8 noise images as floats in [-1, 1]."""
    count, _, height, width = record["images"]["shape"]
    generator = torch.Generator().manual_seed(record["images"]["seed"])
    images = torch.randint(0, 256, (count, 3, height, width), generator=generator, dtype=torch.uint8)
    assert int(images.long().sum()) == record["images"]["checksum"]
    return images.float() / 127.5 - 1


def reference_pixels(record: dict) -> torch.Tensor:
    return torch.randn(*record["pixels"]["shape"], generator=torch.Generator().manual_seed(record["pixels"]["seed"]))


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] images that are exact multiples of 2/255 as 8-bit PIL images."""
    return [Image.fromarray(((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for image in images]


def noise_images(shape: tuple[int, int], seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, *shape), generator=generator).float() / 127.5 - 1


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pick_dir(tmp_path_factory):
    """A tiny CLIPModel and CLIPProcessor in PickScore_v1's layout (one directory)."""
    directory = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    text = dict(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=6
    )
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=3.0))
    clip.save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    CLIPProcessor(image_processor=image_processor, tokenizer=character_tokenizer()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    """HPS_v2_compressed.pt in open_clip's layout at the stored tiny architecture, its open_clip
    model config and a CLIP tokenizer beside it."""
    directory = tmp_path_factory.mktemp("hpsv2")
    state = open_clip_state(HPS["architecture"], HPS["seed"])
    assert checksum(state) == pytest.approx(HPS["weights_checksum"], rel=1e-12)
    torch.save({"state_dict": state}, directory / "HPS_v2_compressed.pt")
    (directory / "tiny.json").write_text(json.dumps(HPS["architecture"]))
    character_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    """ImageReward.pt at the stored tiny sizes, med_config.json and a BERT tokenizer beside it."""
    directory = tmp_path_factory.mktemp("imagereward")
    state = image_reward_state(IR["vision"], IR["med_config"], IR["seed"])
    assert checksum(state) == pytest.approx(IR["weights_checksum"], rel=1e-12)
    torch.save(state, directory / "ImageReward.pt")
    (directory / "med_config.json").write_text(json.dumps(IR["med_config"]))
    bert_tokenizer().save_pretrained(directory)
    return directory


def pickscore(pick_dir, text="a cat"):
    return PickScore(pick_dir, text)


def hpsv2(hps_dir, text="a cat"):
    return HpsV2(hps_dir / "HPS_v2_compressed.pt", text, architecture=str(hps_dir / "tiny.json"))


def imagereward(ir_dir, text="a cat"):
    return ImageReward(ir_dir / "ImageReward.pt", text, vision_heads=IR["vision"]["heads"])


class Prompted:
    """A model with prompts, as the rgb domain's context holds one."""

    prompts = ("a photo of a cat", "a red dog")


def context() -> RgbContext:
    return RgbContext(Prompted(), torch.device("cpu"))


# ----------------------------------------------------------------- preprocessing
def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(OPENAI_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_STD).view(3, 1, 1)


def open_clip_pil_transform(image: Image.Image, size: int) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC) of the shorter side on a PIL image, CenterCrop(size)
    (corner at round((H - size) / 2)), ToTensor, Normalize(OpenAI) as ImageReward's _transform
    (and open_clip's) compose them. It equalled torchvision 0.29.1's output exactly on noise
    images of each shape in SHAPES."""
    width, height = image.size
    new_long = int(size * max(width, height) / min(width, height))
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return normalise(torch.from_numpy(array).permute(2, 0, 1))


def hps_tensor_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """HPSv2's preprocess_val (its transform.py: ToTensor, then Resize(size, BICUBIC) and
    CenterCrop(size) on the tensor, Normalize(OpenAI)): torchvision resizes float tensors with
    interpolate(bicubic, antialias=True) to the shorter side `size`, the longer truncated."""
    height, width = image.shape[-2:]
    new_long = int(size * max(width, height) / min(width, height))
    new_h, new_w = (new_long, size) if width <= height else (size, new_long)
    x = F.interpolate(image[None], (new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return normalise(x[0, :, top : top + size, left : left + size])


@pytest.mark.parametrize("shape", SHAPES)
def test_preprocessing_matches_the_original_transforms(pick_dir, hps_dir, ir_dir, shape):
    """PickScore against CLIPImageProcessor on PIL images, ImageReward against its torchvision PIL
    transform: within PIL's 8-bit rounding (1.5/255 per pixel); HPSv2 against its tensor transform
    to float precision."""
    images = noise_images(shape)
    pil = to_pil(images)
    processor = CLIPProcessor.from_pretrained(pick_dir).image_processor
    expected = torch.tensor(processor(images=pil, return_tensors="np")["pixel_values"])
    mine = pickscore(pick_dir).pixels(images)
    assert mine.shape == expected.shape and (mine - expected).abs().max() <= EIGHT_BIT
    assert (mine - expected).abs().mean() <= 0.3 * EIGHT_BIT
    mine = imagereward(ir_dir).pixels(images)
    expected = open_clip_pil_transform(pil[0], IR["vision"]["image_size"])[None]
    assert mine.shape == expected.shape and (mine - expected).abs().max() <= EIGHT_BIT
    expected = hps_tensor_transform((images[0] + 1) / 2, HPS["architecture"]["vision_cfg"]["image_size"])[None]
    torch.testing.assert_close(hpsv2(hps_dir).pixels(images), expected, rtol=0, atol=2e-6)


def test_hps_preprocessing_matches_torchvision(hps_dir):
    """Statistics of HPSv2's preprocess_val output (torchvision) on the stored images."""
    flat = hpsv2(hps_dir).pixels(reference_images(HPS).double()).flatten()
    stored = HPS["preprocessed"]
    assert float(flat.sum()) == pytest.approx(stored["sum"], abs=1e-3)
    assert float(flat.abs().sum()) == pytest.approx(stored["abs_sum"], rel=1e-6)
    assert float((flat**2).sum()) == pytest.approx(stored["square_sum"], rel=1e-6)
    weights = torch.arange(len(flat), dtype=torch.float64) / len(flat)
    assert float((flat * weights).sum()) == pytest.approx(stored["weighted_sum"], abs=1e-3)


# ----------------------------------------------------------------- scores against the original code
def test_pickscore_equals_its_published_scoring(pick_dir):
    """PickScore's README: processor on PIL images, normalised get_image_features and
    get_text_features, logit_scale.exp() times their product."""
    images = reference_images(HPS)
    model = CLIPModel.from_pretrained(pick_dir).eval()
    processor = CLIPProcessor.from_pretrained(pick_dir)
    reward = pickscore(pick_dir)
    with torch.no_grad():
        pixel_values = processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        image_embs = model.get_image_features(pixel_values=pixel_values).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        expected = []
        for prompt, image_emb in zip(PROMPTS, image_embs):
            text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            text_embs = model.get_text_features(**text_inputs).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            expected.append(model.logit_scale.exp() * (text_embs @ image_emb[:, None])[0, 0])
        expected = torch.stack(expected)
        ours = reward(images, PROMPTS)
        reward.preprocess = lambda x: x  # the processor's own pixel values: the scoring alone
        exact = reward(pixel_values, PROMPTS)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(math.exp(3.0))
    torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0.05)  # 8-bit rounding of PIL's resize


def test_hpsv2_equals_its_published_scoring(hps_dir):
    reward = hpsv2(hps_dir)
    assert [reward.tokens(prompt)[0].tolist() for prompt in PROMPTS] == HPS["tokens"]
    images = reference_images(HPS)
    with torch.no_grad():
        torch.testing.assert_close(reward(images, PROMPTS), torch.tensor(HPS["scores"]), rtol=0, atol=1e-6)
        scores = reward(images.double(), PROMPTS)
        torch.testing.assert_close(scores, torch.tensor(HPS["scores"], dtype=torch.float64), rtol=0, atol=1e-6)
        reward.preprocess = lambda x: x
        scores = reward(reference_pixels(HPS), PROMPTS)
        torch.testing.assert_close(scores, torch.tensor(HPS["pixel_scores"]), rtol=0, atol=1e-6)


def test_imagereward_equals_its_published_scoring(ir_dir):
    reward = imagereward(ir_dir)
    assert [reward.tokens([prompt]).input_ids[0].tolist() for prompt in PROMPTS] == IR["tokens"]
    with torch.no_grad():
        pixels = reference_pixels(IR)
        reward.preprocess = lambda x: x
        torch.testing.assert_close(reward(pixels, PROMPTS), torch.tensor(IR["pixel_scores"]), rtol=0, atol=1e-6)
        scores = reward(pixels.double(), PROMPTS)
        torch.testing.assert_close(scores, torch.tensor(IR["pixel_scores"], dtype=torch.float64), rtol=0, atol=1e-6)
        ours = imagereward(ir_dir)(reference_images(IR), PROMPTS)
    torch.testing.assert_close(ours, torch.tensor(IR["scores"]), rtol=0, atol=0.01)  # 8-bit rounding of PIL's resize


# ----------------------------------------------------------------- behaviour
def test_rewards_are_differentiable(pick_dir, hps_dir, ir_dir):
    images = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    for reward in (pickscore(pick_dir), hpsv2(hps_dir), imagereward(ir_dir)):
        assert check_differentiable(reward, images, directions=2) < 1e-5


@pytest.mark.parametrize("make", [pickscore, hpsv2, imagereward])
def test_each_image_is_scored_against_its_own_prompt(pick_dir, hps_dir, ir_dir, make):
    directory = {pickscore: pick_dir, hpsv2: hps_dir, imagereward: ir_dir}[make]
    images = noise_images((20, 24), seed=1).repeat(3, 1, 1, 1)
    images = images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    prompts = ["a photo of a cat", "a red dog", "a photo of a cat"]
    reward = make(directory, text="a red dog")
    with torch.no_grad():
        scores = reward(images, prompts)
        alone = [make(directory, text=prompt)(images[i : i + 1])[0] for i, prompt in enumerate(prompts)]
        torch.testing.assert_close(scores, torch.stack(alone))
        torch.testing.assert_close(reward(images), make(directory, text="a red dog")(images))
        assert not torch.allclose(scores, reward(images))
    if make is not imagereward:  # its text pass attends to the image: only tokens could be shared
        assert {key[0] for key in reward._texts} == {"a photo of a cat", "a red dog"}
        assert not any(embedding.requires_grad for embedding in reward._texts.values())
    with pytest.raises(ValueError, match="one prompt per image: 3 images, 2 prompts"):
        reward(images, prompts[:2])


def test_registered_rewards_build_from_options(pick_dir, hps_dir, ir_dir):
    """The registry's builders: options as the command line gives them, the model's first prompt
    as the default text."""
    images = noise_images((24, 24))
    built = {
        "pickscore": build_reward("pickscore", "rgb", {"model": str(pick_dir)}, context()),
        "hpsv2": build_reward(
            "hpsv2",
            "rgb",
            {"checkpoint": str(hps_dir / "HPS_v2_compressed.pt"), "architecture": str(hps_dir / "tiny.json")},
            context(),
        ),
        "imagereward": build_reward(
            "imagereward", "rgb", {"checkpoint": str(ir_dir / "ImageReward.pt"), "vision_heads": 4}, context()
        ),
    }
    direct = {
        "pickscore": pickscore(pick_dir, "a photo of a cat"),
        "hpsv2": hpsv2(hps_dir, "a photo of a cat"),
        "imagereward": imagereward(ir_dir, "a photo of a cat"),
    }
    with torch.no_grad():
        for name, reward in built.items():
            torch.testing.assert_close(reward(images), direct[name](images))
    for name, key in (("pickscore", "model"), ("hpsv2", "checkpoint"), ("imagereward", "checkpoint")):
        with pytest.raises(ValueError, match=f"needs the reward option {key}"):
            build_reward(name, "rgb", {}, context())
    with pytest.raises(ValueError, match="vision_heads must be a positive integer, got 0"):
        build_reward("imagereward", "rgb", {"checkpoint": "x", "vision_heads": 0}, context())


def test_missing_files_are_refused_when_built(tmp_path, pick_dir, hps_dir, ir_dir):
    absent = tmp_path / "absent"
    cases = [
        ("pickscore", {"model": str(absent)}, "huggingface.co/yuvalkirstain/PickScore_v1"),
        ("pickscore", {"model": str(pick_dir), "processor": str(absent)}, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
        ("pickscore", {"model": str(tmp_path)}, "huggingface.co/yuvalkirstain/PickScore_v1"),
        ("hpsv2", {"checkpoint": str(absent)}, "HPS_v2.1_compressed.pt from huggingface.co/xswu/HPSv2"),
        ("hpsv2", {"checkpoint": str(hps_dir / "HPS_v2_compressed.pt"), "tokenizer": str(absent)}, "CLIP tokenizer"),
        (
            "hpsv2",
            {"checkpoint": str(hps_dir / "HPS_v2_compressed.pt"), "architecture": str(absent) + ".json"},
            "open_clip model config",
        ),
        ("imagereward", {"checkpoint": str(absent)}, "huggingface.co/THUDM/ImageReward"),
        (
            "imagereward",
            {"checkpoint": str(ir_dir / "ImageReward.pt"), "med_config": str(absent)},
            "med_config.json, the text encoder's configuration from huggingface.co/THUDM/ImageReward",
        ),
        ("imagereward", {"checkpoint": str(ir_dir / "ImageReward.pt"), "tokenizer": str(absent)}, "bert-base-uncased"),
    ]
    for name, options, source in cases:
        with pytest.raises(FileNotFoundError) as error:
            build_reward(name, "rgb", options, context())
        assert source in str(error.value), str(error.value)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "HPS_v2_compressed.pt").write_bytes((hps_dir / "HPS_v2_compressed.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):  # none beside the checkpoint
        build_reward("hpsv2", "rgb", {"checkpoint": str(lone / "HPS_v2_compressed.pt")}, context())


def test_tokenizers_split_prompts_and_an_empty_vocabulary_is_refused(tmp_path, pick_dir, hps_dir, ir_dir):
    assert len(pickscore(pick_dir).tokens("a photo of a cat")[0]) > 2
    assert len(hpsv2(hps_dir).tokens("a photo of a cat")[0]) > 2
    assert len(imagereward(ir_dir).tokens(["a photo of a cat"]).input_ids[0]) > 2
    # transformers 5 ignores vocab_file and merges_file: a tokenizer that knows only its start and end tokens
    (tmp_path / "vocab.json").write_text(json.dumps({"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    broken = CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"))
    broken.save_pretrained(tmp_path / "broken")
    with pytest.raises(ValueError, match="start and end tokens only"):
        HpsV2(hps_dir / "HPS_v2_compressed.pt", "a cat", tmp_path / "broken", str(hps_dir / "tiny.json"))
    (tmp_path / "broken" / "HPS_v2_compressed.pt").write_bytes((hps_dir / "HPS_v2_compressed.pt").read_bytes())
    with pytest.raises(ValueError, match="start and end tokens only"):  # the default: the checkpoint's folder
        build_reward("hpsv2", "rgb", {"checkpoint": str(tmp_path / "broken" / "HPS_v2_compressed.pt")}, context())


# ----------------------------------------------------------------- layouts and published sizes
def test_open_clip_layouts_that_do_not_map_are_refused(tmp_path, hps_dir):
    layout = open_clip_architecture(str(hps_dir / "tiny.json"))
    state = open_clip_state(HPS["architecture"], 0)
    with pytest.raises(ValueError, match=r"unexpected \['visual.extra'\]"):
        from_open_clip({**state, "visual.extra": torch.zeros(1)}, layout)
    with pytest.raises(ValueError, match=r"missing \['ln_final.bias'\]"):
        from_open_clip({key: value for key, value in state.items() if key != "ln_final.bias"}, layout)
    for changed in (
        {"vision_cfg": {**HPS["architecture"]["vision_cfg"], "ls_init_value": 1e-5}},
        {"custom_text": True},
        {"vision_cfg": {**HPS["architecture"]["vision_cfg"], "layers": [3, 4, 6, 3]}},
    ):
        (tmp_path / "odd.json").write_text(json.dumps({**HPS["architecture"], **changed}))
        with pytest.raises(ValueError, match="not supported"):
            open_clip_architecture(str(tmp_path / "odd.json"))
    with pytest.raises(ValueError, match="architecture must be one of"):
        open_clip_architecture("ViT-Q-99")
    wide = {**HPS["architecture"], "embed_dim": 24}
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    with pytest.raises(ValueError, match="does not fit the architecture"):
        HpsV2(hps_dir / "HPS_v2_compressed.pt", "a cat", hps_dir, str(tmp_path / "wide.json"))


def _meta(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def test_vit_h_14_maps_onto_clip_model_at_its_published_sizes():
    """open_clip's ViT-H-14 (counted by open_clip itself: 632,076,800 image-tower and 354,032,641
    other parameters) onto a CLIPModel of the mapped config, every tensor's shape checked, GELU."""
    architecture = open_clip_architecture("ViT-H-14")
    shapes = open_clip_shapes(ARCHITECTURES["ViT-H-14"])
    counts = HPS["vit_h_14_parameters"]
    assert sum(math.prod(s) for n, s in shapes.items() if n.startswith("visual.")) == counts["visual"]
    assert sum(math.prod(s) for n, s in shapes.items() if not n.startswith("visual.")) == counts["text"]
    tokenizer = character_tokenizer()
    config = clip_config(architecture, tokenizer)
    assert config.vision_config.hidden_act == config.text_config.hidden_act == "gelu"
    with torch.device("meta"):
        clip = CLIPModel(config)
    mapped = from_open_clip(_meta(shapes), architecture)
    assert shapes_of(mapped) == shapes_of(clip.state_dict())


def test_imagereward_maps_onto_blip_towers_at_its_published_sizes():
    """ViT-L/16 at 224 and the published med_config.json (BERT-base, vocabulary 30524, cross-attention
    to 1024-wide image tokens): parameter counts as ImageReward's own modules have them."""
    vision = {"image_size": 224, "patch_size": 16, "width": 1024, "depth": 24}
    med = {
        "vocab_size": 30524,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "add_cross_attention": True,
    }
    shapes = image_reward_shapes(vision, med)
    counts = IR["published_parameters"]
    parts = {
        prefix: {n[len(prefix) :]: s for n, s in shapes.items() if n.startswith(prefix)}
        for prefix in ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")
    }
    for prefix, key in zip(parts, ("visual_encoder", "text_encoder", "mlp")):
        assert sum(math.prod(shape) for shape in parts[prefix].values()) == counts[key]
    mapped = vision_state(_meta(parts["blip.visual_encoder."]))
    with torch.device("meta"):
        vision_tower = BlipVisionModel(vision_config(mapped, 16))
        text_tower = BlipTextModel(text_config(med, 1024), add_pooling_layer=False)
    assert shapes_of(mapped) == shapes_of(vision_tower.state_dict())
    assert parts["blip.text_encoder."] == shapes_of(text_tower.state_dict())


# ----------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["pickscore", "hpsv2", "imagereward"])
def test_a_run_optimises_each_reward(tmp_path, tiny_sd, pick_dir, hps_dir, ir_dir, reward):
    from evals.experiment import RunSpec, run

    options = {
        "pickscore": {"model": str(pick_dir)},
        "hpsv2": {"checkpoint": str(hps_dir / "HPS_v2_compressed.pt"), "architecture": str(hps_dir / "tiny.json")},
        "imagereward": {"checkpoint": str(ir_dir / "ImageReward.pt"), "vision_heads": 4},
    }[reward]
    record = run(
        RunSpec(
            task="latent",
            method="shortcut",
            model=f"sd:{tiny_sd}",
            steps=2,
            iters=1,
            batch=2,
            reward=reward,
            reward_options=options,
            task_options={"prompt": "a photo of a cat"},
            eval_every=0,
            device="cpu",
            out=tmp_path / "run.json",
        )
    )
    assert record["status"] == "ok", record.get("reason")
    assert record["reward_check_error"] < 1e-2 and math.isfinite(record["final"]["reward_mean"])

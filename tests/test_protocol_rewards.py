"""The SDO scripts' losses as rewards (evals/rewards/protocols.py) on tiny random CLIP models and
heads built offline: each reward is minus the loss the script computes, written out here step by
step from the scripts (style_guide_implict.py, aesthetic_implict.py, clip_guide_implict.py and the
DiffAugment they import) on the same weights, images and random draws; the alpha schedule; the
gradient check; options and missing files refused with their names."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from evals.rewards import build_reward, reward_options, rewards_for
from evals.rewards.checks import check_differentiable
from evals.rewards.protocols import AestheticTarget, ClipGuide, StyleGram, draw_seed
from sdo.models.pipelines import character_tokenizer

TEXT = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)
SIDE = 32  # the tiny CLIPs' input side (224 for the published ones)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


def save_clip(directory, projection: int, seed: int):
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4, image_size=SIDE, patch_size=8
    )
    CLIPModel(CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=projection)).save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    CLIPProcessor(image_processor=image_processor, tokenizer=character_tokenizer()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    paths = SimpleNamespace(
        large=save_clip(root / "large", 16, 0),
        base=save_clip(root / "base", 12, 1),
        root=root,
        head_large=root / "sa_0_4_vit_l_14_linear.pth",
        head_base=root / "sa_0_4_vit_b_32_linear.pth",
        style=root / "style.png",
        face=root / "face.png",
        face25=root / "face25.png",
    )
    torch.manual_seed(2)
    for path, width in ((paths.head_large, 16), (paths.head_base, 12)):  # LAION's layout, some scores beyond [1, 10]
        head = nn.Linear(width, 1)
        with torch.no_grad():
            head.weight.normal_(0, 4.0)
            head.bias.fill_(5.5)
        torch.save(head.state_dict(), path)
    generator = np.random.default_rng(3)
    Image.fromarray(generator.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(paths.style)
    Image.fromarray(generator.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(paths.face)
    Image.fromarray(generator.integers(0, 256, (25, 25, 3), dtype=np.uint8)).save(paths.face25)
    return paths


def clip64(directory) -> CLIPModel:
    return CLIPModel.from_pretrained(directory, local_files_only=True).double().eval().requires_grad_(False)


def images(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def normalise_pm1(x: torch.Tensor) -> torch.Tensor:
    """The scripts' Normalize((2 mean - 1), 2 std) on images in [-1, 1]."""
    return (x - (MEAN * 2 - 1).view(1, 3, 1, 1)) / (STD * 2).view(1, 3, 1, 1)


def image_features(clip: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    return clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)


# style_guide_implict.py: load_image_512, encode_image_with_features, get_gram_matrix_residual, the loss line


def script_style_loss(clip: CLIPModel, out: torch.Tensor, style_path) -> torch.Tensor:
    image = ImageOps.exif_transpose(Image.open(style_path)).convert("RGB")
    width, height = image.size
    side = min(width, height)
    image = image.crop(((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2))
    image = image.resize((512, 512), resample=Image.Resampling.LANCZOS)
    ref = torch.from_numpy((np.array(image) / 255.0 * 2.0 - 1.0)[np.newaxis].transpose(0, 3, 1, 2))

    def block_outputs(x):
        x = normalise_pm1(F.interpolate(x, size=(SIDE, SIDE), mode="bicubic", align_corners=False))
        x = clip.vision_model.pre_layrnorm(clip.vision_model.embeddings(x))
        outputs = []
        for block in clip.vision_model.encoder.layers:
            x = block(x, None)
            outputs.append(x)
        return outputs

    feat_img, feat_ref = block_outputs(torch.clamp(out, -1, 1))[2][0, 1:], block_outputs(ref)[2][0, 1:]
    residual = feat_img.t() @ feat_img - feat_ref.t() @ feat_ref
    return (residual**2).mean()


def test_style_gram_is_the_scripts_loss(files):
    reward = StyleGram(files.large, files.style, layer=3)
    clip, x = clip64(files.large), images(2, 40) * 1.1  # a few pixels beyond the clamp
    scores = reward(x)
    for i in range(2):
        expected = -script_style_loss(clip, x[i : i + 1], files.style)
        torch.testing.assert_close(scores[i], expected, rtol=1e-10, atol=0)
    # the script's resblock outputs[2] is transformers' hidden_states[3] (the `style` reward's layer 3)
    pixels = normalise_pm1(F.interpolate(x.clamp(-1, 1), size=(SIDE, SIDE), mode="bicubic", align_corners=False))
    hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[3][:, 1:]
    torch.testing.assert_close(reward.tokens(reward.model_for(x), x.clamp(-1, 1)), hidden, rtol=1e-12, atol=1e-12)
    assert check_differentiable(reward, images(2, 40)) < 1e-5


# aesthetic_implict.py: MakeCutouts, aesthetic_score, aesthetic_loss_fn (use_cutouts, num_cuts=16,
# cut_power=0.3, clip_model_str="both", weights=[0.5, 1.5]); the script's global torch RNG seeded here


def script_aesthetic_loss(files, out: torch.Tensor, seed: int, target: float | None, num_cuts=16, cut_power=0.3):
    clips = [clip64(files.large), clip64(files.base)]
    heads = []
    for path, width in ((files.head_large, 16), (files.head_base, 12)):
        heads.append(nn.Linear(width, 1).double())
        heads[-1].load_state_dict(torch.load(path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        im_pix = ((torch.clamp(out, -1, 1) / 2) + 0.5).clamp(0, 1)
        side_y, side_x = im_pix.shape[2:4]
        max_size, min_size = min(side_x, side_y), min(side_x, side_y, SIDE)
        cutouts = []
        for _ in range(num_cuts):
            size = int(torch.rand([]) ** cut_power * (max_size - min_size) + min_size)
            offset_x = torch.randint(0, side_x - size + 1, ())
            offset_y = torch.randint(0, side_y - size + 1, ())
            cutout = im_pix[:, :, offset_y : offset_y + size, offset_x : offset_x + size]
            cutouts.append(F.adaptive_avg_pool2d(cutout, SIDE))
    x_var = (torch.cat(cutouts) - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    predictions = []
    for clip, head in zip(clips, heads):
        features = image_features(clip, x_var)
        features = features / features.norm(dim=-1, keepdim=True)
        predictions.append(head(features).clip(1, 10).mean())
    prediction = sum(w * p for w, p in zip([0.5, 1.5], predictions)) / len(predictions)
    return -prediction if target is None else abs(prediction - target)


def aesthetic(files, **options) -> AestheticTarget:
    return AestheticTarget(files.large, files.base, files.head_large, files.head_base, **options)


def test_aesthetic_target_is_the_scripts_loss(files):
    reward, x = aesthetic(files, seed=5), images(2, 40) * 1.1
    reward.at_iteration(3)
    scores = reward(x)
    for i in range(2):  # each image of a batch gets the script's loss on that image alone
        expected = -script_aesthetic_loss(files, x[i : i + 1], draw_seed(5, 3), target=10.0)
        torch.testing.assert_close(scores[i], expected, rtol=1e-12, atol=0)
    assert {side for side, _, _ in reward.boxes(40, 40)} <= set(range(SIDE, 41))
    torch.testing.assert_close(reward(x), scores, rtol=0, atol=0)  # the same draws within an iteration
    reward.at_iteration(4)
    assert not torch.equal(reward(x), scores)  # fresh cutouts the next iteration, as the script's global RNG
    fixed = aesthetic(files, seed=5, redraw=False, target=None)
    fixed.at_iteration(4)
    expected = -script_aesthetic_loss(files, x[:1], draw_seed(5, 0), target=None)
    torch.testing.assert_close(fixed(x[:1])[0], expected, rtol=1e-12, atol=0)
    assert check_differentiable(reward, images(2, 40)) < 1e-5


# clip_guide_implict.py: make_clip_loss and the alpha line of dmplug_clip_optimize; DiffAugment with
# policy "color,translation,resize,cutout" (util/DiffAugment_pytorch.py, as in FlowGrad / FuseDream)


def script_diff_augment(x: torch.Tensor) -> torch.Tensor:
    n = x.size(0)
    x = x + (torch.rand(n, 1, 1, 1, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype) + 0.5) + mean  # contrast
    shift_x, shift_y = int(x.size(2) * 0.125 + 0.5), int(x.size(3) * 0.125 + 0.5)  # translation
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[n, 1, 1])
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[n, 1, 1])
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    x = x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2).contiguous()
    ratio = np.random.rand() * (1.2 - 0.8) + 0.8  # resize
    resized = F.interpolate(x, size=int(ratio * x.shape[3]), mode="bilinear")
    if int(ratio * x.shape[3]) < x.shape[3]:
        left = int((x.shape[3] - int(ratio * x.shape[3])) / 2.0)
        right = x.shape[3] - left - resized.shape[3]
        x = F.pad(resized, (left, right, left, right), "constant", 0.0)
    else:
        left = int((int(ratio * x.shape[3]) - x.shape[3]) / 2.0)
        x = resized[:, :, left : left + x.shape[3], left : left + x.shape[3]]
    size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)  # cutout
    offset_x = torch.randint(0, x.size(2) + (1 - size[0] % 2), size=[n, 1, 1])
    offset_y = torch.randint(0, x.size(3) + (1 - size[1] % 2), size=[n, 1, 1])
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n), torch.arange(size[0]), torch.arange(size[1]), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + offset_x - size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(n, x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


def script_clip_loss(files, x: torch.Tensor, text: str, alpha: float, seed: int, copies: int = 20) -> torch.Tensor:
    clip = clip64(files.large)
    face = files.face if x.shape[-1] == 24 else files.face25
    ref_img = torch.tensor(np.array(Image.open(face).convert("RGB")) / 255.0 * 2 - 1).permute(2, 0, 1)[None]
    x = torch.clamp(x, -1, 1)
    sim = (x - ref_img).abs().mean()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        img_aug = script_diff_augment(x.repeat(copies, 1, 1, 1))
    img_aug = normalise_pm1(F.interpolate(img_aug, size=SIDE, mode="bilinear", align_corners=False))
    text_tok = CLIPTokenizer.from_pretrained(files.large)([text], return_tensors="pt").input_ids
    logits_per_image = clip(input_ids=text_tok, pixel_values=img_aug).logits_per_image
    concept_loss = (-1.0) * logits_per_image / clip.logit_scale.exp()
    return alpha * concept_loss.mean() + (1.0 - alpha) * sim.sum()


def guide(files, face=None, **options) -> ClipGuide:
    return ClipGuide(files.large, "a smiling face", face or files.face, **options)


@pytest.mark.parametrize(
    "seed, side",  # resize ratio, as these seeds draw it at iteration 6: 0.97, 0.83 (shrink, pad), 1.14 (crop)
    [(9, 24), (4, 24), (8, 25)],
)
def test_clip_guide_is_the_scripts_loss(files, seed, side):
    reward = guide(files, files.face if side == 24 else files.face25, alpha_from=2, seed=seed)
    x = images(2, side) * 1.1
    reward.at_iteration(6)
    scores = reward(x)
    for i in range(2):  # each image of a batch gets the script's loss on that image alone
        expected = -script_clip_loss(files, x[i : i + 1], "a smiling face", 0.5, draw_seed(seed, 6))
        torch.testing.assert_close(scores[i], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(reward(x), scores, rtol=0, atol=0)  # the same draws within an iteration
    reward.at_iteration(7)
    assert not torch.equal(reward(x), scores)
    assert check_differentiable(reward, images(2, side)) < 1e-5
    with pytest.raises(ValueError, match="square images"):
        reward(images(1, side)[..., :20])


def test_clip_guide_alpha_switches_at_alpha_from(files):
    x = images(1, 24, seed=1)
    reward = guide(files)  # the script's schedule: alpha 0 before iteration 150, 0.5 from it on
    assert reward.current_alpha == 0.0
    torch.testing.assert_close(reward(x), -script_clip_loss(files, x, "a smiling face", 0.0, draw_seed(0, 0))[None])
    reward.at_iteration(149)
    assert reward.current_alpha == 0.0
    l1 = (x - reward.reference.double()).abs().mean()
    torch.testing.assert_close(reward(x), -l1[None], rtol=1e-14, atol=0)
    assert check_differentiable(reward, x) < 1e-5
    reward.at_iteration(150)
    assert reward.current_alpha == 0.5
    expected = -script_clip_loss(files, x, "a smiling face", 0.5, draw_seed(0, 150))
    torch.testing.assert_close(reward(x)[0], expected, rtol=1e-12, atol=0)
    fixed = guide(files, redraw=False, alpha_from=0)
    fixed.at_iteration(150)
    expected = -script_clip_loss(files, x, "a smiling face", 0.5, draw_seed(0, 0))
    torch.testing.assert_close(fixed(x)[0], expected, rtol=1e-12, atol=0)
    other = images(1, 25)  # a reference of another size is resized to the images' (the script has one size)
    reference = F.interpolate(reward.reference.double(), size=25, mode="bicubic", antialias=True).clamp(-1, 1)
    torch.testing.assert_close(reward.l1(other), (other - reference).abs().mean()[None], rtol=1e-14, atol=0)


def test_protocol_rewards_come_from_the_registry(files):
    assert {"style_gram", "aesthetic_target", "clip_guide"} <= set(rewards_for("rgb"))
    context = SimpleNamespace(model=SimpleNamespace(prompts=[""]), device=torch.device("cpu"))
    options = {"clip_model": str(files.large), "image": str(files.face), "text": "a face", "alpha_from": 1}
    reward = build_reward("clip_guide", "rgb", options, context)
    assert isinstance(reward, ClipGuide) and reward.current_alpha == 0.0
    reward.at_iteration(1)
    assert reward.current_alpha == 0.5
    with pytest.raises(ValueError, match="needs the reward option text"):
        build_reward("clip_guide", "rgb", {"clip_model": str(files.large), "image": str(files.face)}, context)
    paths = {"clip_large": str(files.large), "clip_base": str(files.base)}
    heads = {"head_large": str(files.head_large), "head_base": str(files.head_base)}
    reward = build_reward("aesthetic_target", "rgb", {**paths, **heads, "cutouts": 2}, context)
    assert isinstance(reward, AestheticTarget) and reward(images(1, 40)).shape == (1,)
    with pytest.raises(ValueError, match="head_base"):
        build_reward("aesthetic_target", "rgb", paths | {"head_large": str(files.head_large)}, context)
    reward = build_reward("style_gram", "rgb", {"clip_model": str(files.large), "image": str(files.style)}, context)
    assert isinstance(reward, StyleGram) and reward.layer == 3


@pytest.mark.parametrize(
    "name, values, message",
    [
        ("clip_guide", {"copies": 0}, "copies must be >= 1, got 0"),
        ("clip_guide", {"alpha": 1.5}, r"alpha must lie in \[0, 1\].*got 1.5"),
        ("clip_guide", {"alpha_from": -1}, "alpha_from must be >= 0"),
        ("clip_guide", {"seed": -2}, "seed must be >= 0, got -2"),
        ("aesthetic_target", {"cutouts": 0}, "cutouts must be >= 1, got 0"),
        ("aesthetic_target", {"cut_power": 0}, "cut_power must be a finite number > 0"),
        ("aesthetic_target", {"weight_base": -1.0}, "weight_base must be a finite number >= 0, got -1.0"),
        ("aesthetic_target", {"weight_large": 0, "weight_base": 0}, "both 0"),
        ("aesthetic_target", {"target": float("inf")}, "target must be a finite number"),
        ("style_gram", {"layer": -1}, r"layer must be >= 0 \(0: the embeddings.*got -1"),
    ],
)
def test_protocol_options_name_bad_values(name, values, message):
    with pytest.raises(ValueError, match=message):
        reward_options(name, "rgb", values)


def test_missing_protocol_files_are_named(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-base-patch32") as error:
        ClipGuide(tmp_path / "no_clip", "a face", files.face)
    assert str(tmp_path / "no_clip" / "config.json") in str(error.value)
    with pytest.raises(FileNotFoundError, match="reference image"):
        ClipGuide(files.large, "a face", tmp_path / "no_face.png")
    with pytest.raises(FileNotFoundError, match="sa_0_4_vit_b_32_linear.pth, published in github.com/LAION-AI"):
        AestheticTarget(files.large, files.base, files.head_large, tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14"):
        AestheticTarget(tmp_path, files.base, files.head_large, files.head_base)
    with pytest.raises(ValueError, match="the base aesthetic head takes 16-d embeddings, its CLIP model gives 12-d"):
        AestheticTarget(files.large, files.base, files.head_large, files.head_large)
    with pytest.raises(FileNotFoundError, match="style image"):
        StyleGram(files.large, tmp_path / "no_style.png")
    with pytest.raises(ValueError, match=r"layer must lie in 0..4"):
        StyleGram(files.large, files.style, layer=5)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((files.large / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="is incomplete"):
        StyleGram(incomplete, files.style)

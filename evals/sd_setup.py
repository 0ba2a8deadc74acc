"""Stable Diffusion as an experiment setup: the model with its memory levers, CLIP-based rewards
on its RGB images, and metrics against the prompts and a folder of reference images.

`sd:<directory or model id>` loads local weights (`StableDiffusion.load`; nothing is
downloaded unless `allow_download`, and missing weights raise FileNotFoundError saying where
it looked); `sd-random:<version>` draws random weights from the published architecture, for
time and memory measurements only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evals.image_rewards import AestheticScore, ClipSimilarity, ClipStyle, inception_fid_folder
from evals.metrics import clip_score, mean_ci95
from evals.rewards import load_callable, per_sample
from evals.setup import Setup
from sdo.models.stable_diffusion import StableDiffusion

REWARDS = ("clip", "aesthetic", "style")


def load_model(spec, device: torch.device) -> StableDiffusion:
    """The model `spec.model` names, at `spec.resolution` in `spec.dtype` with the spec's memory
    levers; random weights are drawn from `spec.seed`."""
    kind, _, source = spec.model.partition(":")
    levers = dict(
        resolution=spec.resolution, dtype=getattr(torch, spec.dtype), device=device,
        gradient_checkpointing=spec.gradient_checkpointing, attention_slicing=spec.attention_slicing,
        vae_slicing=spec.vae_slicing,
    )
    if kind == "sd-random":
        return StableDiffusion.random(source or "1.5", seed=spec.seed, **levers)
    if kind == "sd" and source:
        return StableDiffusion.load(source, allow_download=spec.allow_download, **levers)
    raise ValueError(f"unknown model {spec.model!r}: use 'sd:<directory or model id>' or 'sd-random:<version>'")


def _given(value, flag: str, reward: str):
    if value is None:
        raise ValueError(f"the {reward} reward needs {flag}")
    return value


def build_reward(spec, device: torch.device):
    """`clip`: CLIP similarity to `spec.reward_prompt` (else the run's prompt); `aesthetic`:
    the LAION predictor `spec.aesthetic_head` over `spec.clip_model`; `style`: Gram matrices of
    CLIP features against `spec.style_image`; or a user's `module:function`."""
    if spec.reward == "clip":
        text = spec.reward_prompt or spec.prompt
        if not text:
            raise ValueError("the clip reward needs a text: --reward-prompt (or --prompt)")
        return ClipSimilarity(_given(spec.clip_model, "--clip-model", "clip"), text, device)
    if spec.reward == "aesthetic":
        head = _given(spec.aesthetic_head, "--aesthetic-head", "aesthetic")
        return AestheticScore(_given(spec.clip_model, "--clip-model", "aesthetic"), head, device)
    if spec.reward == "style":
        style = _given(spec.style_image, "--style-image", "style")
        return ClipStyle(_given(spec.clip_model, "--clip-model", "style"), style, device=device)
    if ":" in spec.reward:
        return per_sample(load_callable(spec.reward))
    raise ValueError(f"unknown reward {spec.reward!r} for Stable Diffusion: use one of {REWARDS} or 'package.module:function'")


def squared_pixels(images: torch.Tensor) -> torch.Tensor:
    """Minus each image's mean squared value: as a loss, the decoded images' mean square (a
    stand-in with the decode in the gradient path, for cost measurements without reward weights)."""
    return -(images**2).flatten(1).mean(1)


def bench_reward(spec, model: StableDiffusion, device: torch.device):
    """The bench's reward: CLIP similarity to `spec.reward_prompt` (default: the model's first
    prompt) when `spec.clip_model` is given, else `squared_pixels`."""
    if spec.clip_model is None:
        return squared_pixels
    return ClipSimilarity(spec.clip_model, spec.reward_prompt or model.prompts[0], device)


@torch.no_grad()
def clip_diversity(clip, images: torch.Tensor) -> float:
    """Mean pairwise cosine distance (1 - cos) between the images' CLIP embeddings from a
    CLIP-based reward (`image_embeddings`); one CLIP vision pass."""
    embeddings = F.normalize(clip.image_embeddings(images).double(), dim=-1)
    n = len(embeddings)
    return float((n * n - (embeddings @ embeddings.T).sum()) / (n * (n - 1)))


def sd_setup(spec, device: torch.device) -> Setup:
    """Model, reward (`build_reward`), monitor (mean reward, and CLIP score against the reward
    text when a CLIP model is given) and final metrics: reward mean and 95% interval over the
    samples, CLIP score of each sample against its prompt (a null or missing prompt stands for
    the reward prompt, else the run's), Inception FID against `spec.reference_images` when
    `spec.inception_weights` is given too, CLIP-embedding diversity for a CLIP-based reward,
    and each evaluation-only `metric:<name>`. CLIP score loads the CLIP model per call."""
    model = load_model(spec, device)
    reward = build_reward(spec, device)
    extra = {name: per_sample(load_callable(name)) for name in spec.metrics}
    fallback = spec.reward_prompt or spec.prompt

    def texts(prompts: list[str] | None, count: int) -> list[str] | None:
        shown = [p or fallback for p in (prompts or [fallback] * count)]
        return shown if spec.clip_model is not None and all(shown) else None

    def monitor(images: torch.Tensor) -> dict:
        scores = {"reward": float(reward(images).mean())}
        if shown := texts(None, len(images)):
            scores["clip_score"] = clip_score(images, shown, spec.clip_model)
        return scores

    @torch.no_grad()
    def summarize(samples: torch.Tensor, prompts: list[str] | None) -> dict:
        mean, half = mean_ci95(reward(samples))
        summary = {"reward_mean": mean, "reward_ci95": half, "samples": len(samples)}
        if shown := texts(prompts, len(samples)):
            summary["clip_score"] = clip_score(samples, shown, spec.clip_model)
        if spec.reference_images is not None and spec.inception_weights is not None:
            summary["fid_inception"] = inception_fid_folder(samples, spec.reference_images, spec.inception_weights)
        if hasattr(reward, "image_embeddings") and len(samples) > 1:
            summary["diversity"] = clip_diversity(reward, samples)
        for name, metric in extra.items():
            summary[f"metric:{name}"] = mean_ci95(metric(samples))[0]
        return summary

    return Setup(model, reward, monitor, summarize)

"""RGB images of the diffusers text-to-image families (3xHxW in [-1, 1]): CLIP-based rewards and
metrics against the prompts and a folder of reference images, all from local weights. The
guard against reward hacking is Inception FID where its weights and reference images are
given (lower is better)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evals.domains import Domain, register_domain
from evals.images import inception_fid_folder, mean_ci95


@dataclass
class RgbMetricOptions:
    """`clip_model`: a local CLIP directory (adds CLIP score of each sample against its
    prompt); `inception_weights` and `reference_images`: an Inception-v3 weights file and a
    folder of images (add Inception FID)."""

    clip_model: str = ""
    inception_weights: str = ""
    reference_images: str = ""


@dataclass
class RgbContext:
    model: object
    device: torch.device


def context(model, device) -> RgbContext:
    return RgbContext(model, torch.device(device))


@torch.no_grad()
def clip_diversity(clip, images: torch.Tensor) -> float:
    """Mean pairwise cosine distance (1 - cos) between the images' CLIP embeddings from a
    CLIP-based reward (`image_embeddings`); one CLIP vision pass."""
    embeddings = F.normalize(clip.image_embeddings(images).double(), dim=-1)
    n = len(embeddings)
    return float((n * n - (embeddings @ embeddings.T).sum()) / (n * (n - 1)))


def takes_prompts(metric) -> bool:
    """Whether a metric scores each image against its own prompt (a `prompts` argument)."""
    import inspect

    try:
        return "prompts" in inspect.signature(metric).parameters
    except (TypeError, ValueError):
        return False


def setup(model, reward, context: RgbContext, extra: dict, options: RgbMetricOptions):
    """Tracked during runs: the reward. Final: reward mean and 95% interval over the samples,
    CLIP score of each sample against its prompt (null prompts skipped) with a CLIP model,
    Inception FID against the reference folder with Inception weights, CLIP-embedding diversity
    for a CLIP-based reward, and each evaluation-only `metric:<name>`."""

    def monitor(images: torch.Tensor) -> dict:
        return {"reward": float(reward(images).mean())}

    @torch.no_grad()
    def summarize(samples: torch.Tensor, prompts: list[str] | None) -> dict:
        mean, half = mean_ci95(reward(samples))
        summary = {"reward_mean": mean, "reward_ci95": half, "samples": len(samples)}
        shown = [(i, p) for i, p in enumerate(prompts or []) if p]
        if options.clip_model and shown:
            from evals.rewards.clip import clip_score

            index, texts = zip(*shown)
            summary["clip_score"] = clip_score(samples[list(index)], list(texts), options.clip_model)
        if options.reference_images and options.inception_weights:
            summary["fid_inception"] = inception_fid_folder(
                samples, options.reference_images, options.inception_weights
            )
        if hasattr(reward, "image_embeddings") and len(samples) > 1:
            summary["diversity"] = clip_diversity(reward, samples)
        for name, metric in extra.items():
            scores = metric(samples, prompts=prompts) if prompts and takes_prompts(metric) else metric(samples)
            summary[f"metric:{name}"] = mean_ci95(scores)[0]
        return summary

    return monitor, summarize


register_domain(
    Domain(
        "rgb",
        RgbMetricOptions,
        context,
        setup,
        bench_reward=("mean_square", {}),
        guard=("fid_inception", True),
    )
)
